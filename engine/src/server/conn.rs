//! The connection state machine: lifecycle, request → response dispatch, and the auth glue.
//!
//! A driver tells a [`Conn`] what happened (readable, some bytes sent, the auth pool answered, a
//! deadline passed) and the connection answers with what it needs next ([`Next`]): read more,
//! write what [`Conn::prepare_send`] describes, wait (parked on the auth pool), or close. The
//! driver decides *how*: an io_uring SENDMSG or a direct `sendmsg`, a POLL_ADD or an epoll edge.
//! Both drivers read with `recv` once the socket is readable, so idle keep-alive connections own
//! no read buffer (a few hundred bytes each in all).
//!
//! On an HTTPS connection a [`TlsSession`] sits between this state machine and the socket:
//! received bytes are decrypted before parsing, and each send encrypts the next bytes of the
//! response into the session's buffer (see [`super::tls`]).
//!
//! The connection makes no syscall itself: it asks its [`ConnSocket`] (receive, send-buffer
//! size, `TCP_INFO`, the unsent queue). What it delegates: building the response
//! ([`respond`]), planning sends ([`send`]), asking the shaper
//! ([`shaping`](super::shaping)) and crediting delivered bytes ([`credit`](super::credit)).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{self, Method, Parsed, RequestError, RequestHead, Route};

use super::auth::{Decision, Job, Reply, Verdict};
use super::credit::{ConnCredit, EmptyDelivery};
use super::ctx::Ctx;
use super::resources::Resource;
use super::respond::{self, Repr, Response};
use super::send::{self, SendBuf, SendPlan};
use super::shaping::{Allowance, ConnShaping, ShapeClass};
use super::sndbuf::{self, SendBufferPolicy};
use super::socket::{ConnSocket, FdSocket};
use super::tls::{AckView, TlsSession};
use crate::accesslog::ConnLog;

/// How long a closing connection waits for the client's FIN after the last response.
const LINGER: Duration = Duration::from_secs(5);

/// What a connection needs from its driver next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait until readable, then call [`Conn::on_readable`].
    Read,
    /// Send what [`Conn::prepare_send`] describes, then call [`Conn::on_sent`].
    Write,
    /// Nothing to do until the auth pool answers ([`Conn::on_auth`]).
    Park,
    /// Close the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request waits for the auth pool.
    Auth,
    /// A response is being sent.
    Send,
}

/// A request parked while the auth pool decides.
struct Pending {
    head: RequestHead,
    item: String,
    class: Option<ShapeClass>,
    parked: Instant,
}

pub struct Conn<S = FdSocket> {
    pub sock: S,
    /// Slab index and generation, as carried in io_uring user data.
    pub token: u64,
    state: State,
    /// Bytes received and not yet consumed: a partial head or pipelined requests. No allocation
    /// while the connection is idle.
    inbuf: Vec<u8>,
    /// When the current phase (head, idle keep-alive, send progress) times out.
    pub deadline: Instant,
    /// True once any byte of the current request head arrived.
    head_started: bool,
    pending: Option<Box<Pending>>,
    /// INVARIANT: replaced or dropped only between sends (never while `send` describes it to
    /// the kernel): see [`SendBuf`].
    resp: Option<Box<Response>>,
    /// The send in flight, as iovecs into `resp` (the connection is boxed: they do not move).
    /// INVARIANT: private, so only [`Conn::prepare_send`] rewrites it (between sends); drivers
    /// read it through [`Conn::send_buf`] and cannot move or replace it under the kernel.
    send: SendBuf,
    /// io_uring operations in flight on this connection (the slot is freed only at zero).
    pub in_flight: u8,
    /// epoll: the socket may have data / room (edge-triggered bookkeeping).
    pub readable: bool,
    pub writable: bool,
    /// What the connection last asked its driver for.
    pub want: Next,
    pub closing: bool,
    /// Stream bytes handed to the kernel since the connection began.
    written: u64,
    /// Delivered-bytes accounting (empty until the connection carries catalog content).
    credit: ConnCredit,
    /// The server closed its side after a response and waits for the client's FIN.
    lingering: bool,
    /// The shaper's view of this connection (its key, grant in flight, wait).
    pub shaping: ConnShaping,
    /// The send-buffer size of unshaped downloads (see [`sndbuf`]).
    sndbuf: SendBufferPolicy,
    /// Bytes the last planned send asked the kernel to take (a send that took fewer found the
    /// send buffer full).
    planned: usize,
    /// HTTPS: the TLS layer between this state machine and the socket (see [`super::tls`]).
    tls: Option<Box<TlsSession>>,
    /// The current response as the access log and `GET /downloads` see it.
    pub log: ConnLog,
}

impl<S: ConnSocket> Conn<S> {
    /// The send [`Conn::prepare_send`] planned, for the driver to submit.
    pub fn send_buf(&self) -> &SendBuf {
        &self.send
    }

    pub fn new(sock: S, token: u64, now: Instant, ctx: &Ctx) -> Box<Conn<S>> {
        Box::new(Conn {
            sock,
            token,
            state: State::Head,
            inbuf: Vec::new(),
            deadline: now + ctx.cfg.header_timeout,
            head_started: false,
            pending: None,
            resp: None,
            send: SendBuf::default(),
            in_flight: 0,
            readable: true,
            writable: true,
            want: Next::Read,
            closing: false,
            written: 0,
            credit: ConnCredit::default(),
            lingering: false,
            shaping: ConnShaping::default(),
            sndbuf: SendBufferPolicy::default(),
            planned: 0,
            tls: None,
            log: ConnLog::default(),
        })
    }

    /// Speak TLS on this connection (accepted on the HTTPS listener).
    pub fn with_tls(mut self: Box<Self>, session: Box<TlsSession>) -> Box<Self> {
        self.tls = Some(session);
        self
    }

    /// Idle between requests: nothing received, nothing to send.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head && !self.head_started && self.inbuf.is_empty()
    }

    /// A deadline passed: what to do. Timeouts close the connection.
    pub fn on_deadline(&mut self, now: Instant) -> Option<Next> {
        if self.state == State::Auth || now < self.deadline {
            return None;
        }
        match self.state {
            State::Head if self.head_started => {
                tracing::debug!(token = self.token, "request head timeout")
            }
            State::Head => tracing::trace!(token = self.token, "idle timeout"),
            _ => tracing::debug!(token = self.token, "send made no progress: timeout"),
        }
        Some(Next::Close)
    }

    /// The server is draining: idle connections close now, busy ones after their response.
    pub fn on_drain(&mut self) -> Option<Next> {
        if let Some(r) = &mut self.resp {
            r.keep_alive = false;
        }
        self.is_idle().then_some(Next::Close)
    }

    /// The socket is readable: receive and act on what arrived.
    pub fn on_readable(&mut self, ctx: &mut Ctx) -> Next {
        debug_assert_eq!(self.state, State::Head);
        // The worker's receive buffer, taken out of the context for the duration (no copy).
        let mut scratch = std::mem::take(&mut ctx.scratch);
        let next = loop {
            let n = match self.sock.recv(&mut scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break Next::Read;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Next::Close,
            };
            if n < scratch.len() {
                // A short read drained the socket; a new edge comes with new data.
                self.readable = false;
            }
            let next = self.feed(ctx, &scratch[..n]);
            if next != Next::Read || !self.readable {
                break next;
            }
        };
        ctx.scratch = scratch;
        next
    }

    /// Bytes arrived (from `recv` or an io_uring provided buffer); empty means the peer's FIN.
    pub fn feed(&mut self, ctx: &mut Ctx, data: &[u8]) -> Next {
        if self.tls.is_some() && !data.is_empty() {
            return self.feed_tls(ctx, data);
        }
        self.feed_plain(ctx, data)
    }

    /// Ciphertext arrived: decrypt, then parse what plaintext it carried (a close_notify is
    /// the client's end, like a FIN). Whatever rustls must answer (the handshake) is sent next.
    fn feed_tls(&mut self, ctx: &mut Ctx, data: &[u8]) -> Next {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Next::Close;
        };
        if tls.plain_http_first(data) {
            // Plain HTTP on the HTTPS port: a plain 400, then close.
            tracing::debug!(token = self.token, "plain HTTP on the TLS port");
            ctx.stats.add(&ctx.stats.tls_errors, 1);
            self.tls = None;
            self.head_started = true;
            return self.bad_request(
                ctx,
                RequestError::BadRequest("plain HTTP on the HTTPS port"),
            );
        }
        let before = self.inbuf.len();
        let got = match tls.receive(data, &mut self.inbuf) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(token = self.token, error = %e, "TLS: closing");
                ctx.stats.add(&ctx.stats.tls_errors, 1);
                return Next::Close;
            }
        };
        let mut next = Next::Read;
        if self.lingering || self.state != State::Head {
            // Lingering: only the end matters. (No read happens while a request is served.)
            self.inbuf.truncate(before);
        } else if self.inbuf.len() > before {
            if !self.head_started {
                self.head_started = true;
                self.deadline = ctx.now + ctx.cfg.header_timeout;
            }
            next = self.parse_buffered(ctx);
        }
        if got.closed && next == Next::Read {
            return self.feed_plain(ctx, &[]);
        }
        if next == Next::Read
            && !self.lingering
            && self.tls.as_ref().is_some_and(|t| t.wants_write())
        {
            next = Next::Write;
        }
        next
    }

    fn feed_plain(&mut self, ctx: &mut Ctx, data: &[u8]) -> Next {
        if data.is_empty() {
            // A clean FIN: the client's application read everything before closing.
            self.account(ctx, true, true);
            return Next::Close;
        }
        if self.lingering {
            return Next::Read;
        }
        if !self.head_started {
            self.head_started = true;
            self.deadline = ctx.now + ctx.cfg.header_timeout;
        }
        if !self.inbuf.is_empty() {
            self.inbuf.extend_from_slice(data);
            return self.parse_buffered(ctx);
        }
        // Common case: the whole head arrived in one read; parse in place.
        match http::parse_request(data, &ctx.limits) {
            Ok(Parsed::Complete { head, consumed }) => {
                self.inbuf.extend_from_slice(&data[consumed..]);
                self.begin_request(ctx, head)
            }
            Ok(Parsed::Partial) => {
                self.inbuf.extend_from_slice(data);
                Next::Read
            }
            Err(e) => self.bad_request(ctx, e),
        }
    }

    /// Parse a request from `inbuf` (partial heads, pipelined requests).
    fn parse_buffered(&mut self, ctx: &mut Ctx) -> Next {
        match http::parse_request(&self.inbuf, &ctx.limits) {
            Ok(Parsed::Complete { head, consumed }) => {
                self.inbuf.drain(..consumed);
                if self.inbuf.is_empty() {
                    self.inbuf = Vec::new();
                }
                self.begin_request(ctx, head)
            }
            Ok(Parsed::Partial) => Next::Read,
            Err(e) => self.bad_request(ctx, e),
        }
    }

    fn bad_request(&mut self, ctx: &mut Ctx, e: RequestError) -> Next {
        self.inbuf = Vec::new();
        let status = e.status();
        let extra: &[(&str, &str)] = if status == 405 {
            &[("Allow", "GET, HEAD")]
        } else {
            &[]
        };
        // After a malformed head nothing on this connection can be trusted: answer and close.
        self.error(ctx, status, false, false, extra)
    }

    /// Route, then authenticate and authorize from the worker's caches ([`AuthCache`]), or park
    /// and ask the auth pool.
    ///
    /// [`AuthCache`]: super::auth::AuthCache
    fn begin_request(&mut self, ctx: &mut Ctx, head: RequestHead) -> Next {
        self.credit.on_request();
        // The client sent this request after reading the previous response: all of it counts.
        self.end_log(ctx, false);
        let item = match http::route(&head.target) {
            Route::NotFound => None,
            Route::Item(id) => Some(http::zip_album(id).unwrap_or(id)),
            Route::Track { album, .. } => Some(album),
            Route::Zip(album) => Some(album),
        };
        let logging = ctx.access.is_some();
        let named = item.unwrap_or(&head.target);
        self.log
            .request(ctx.now, named, head.range.as_deref(), logging);
        let Some(item) = item else {
            return self.simple(ctx, &head, 404);
        };
        let classes = ctx.shaping.rates.classes();
        let decision = ctx
            .cache
            .authorize(&ctx.secret, &classes, &head, item, ctx.now);
        let (claim, class) = match decision {
            Decision::Serve { res, user, class } => {
                return self.serve(ctx, head, &res, user, class)
            }
            Decision::Refuse(status) => return self.simple(ctx, &head, status),
            // A cache miss: park and ask the pool.
            Decision::Ask { claim, class } => (claim, class),
        };
        let job = Job {
            worker: ctx.id,
            conn: self.token,
            claim,
            item: item.to_string(),
            peer: self.sock.peer_ip(),
        };
        let item = job.item.clone();
        if !ctx.pool.submit(job) {
            return self.error(
                ctx,
                503,
                head.method == Method::Head,
                false,
                &[("Retry-After", "1")],
            );
        }
        let parked = ctx.now;
        self.pending = Some(Box::new(Pending {
            head,
            item,
            class,
            parked,
        }));
        self.state = State::Auth;
        Next::Park
    }

    /// The auth pool answered for this connection's parked request.
    pub fn on_auth(&mut self, ctx: &mut Ctx, reply: Reply) -> Next {
        let Some(p) = self.pending.take() else {
            return Next::Close;
        };
        ctx.cache.learn(&reply, &p.item, ctx.now);
        let waited = ctx.now.saturating_duration_since(p.parked);
        ctx.stats.auth_latency.observe(waited);
        if let (Verdict::Allowed, Some(user)) = (&reply.verdict, &reply.user) {
            ctx.shaping.user(user, reply.user_rate);
        }
        match (reply.verdict, reply.resource, reply.user) {
            (Verdict::Allowed, Some(res), Some(user)) => {
                self.serve(ctx, p.head, &res, user, p.class)
            }
            (Verdict::Allowed, ..) | (Verdict::NotFound, ..) => self.simple(ctx, &p.head, 404),
            (Verdict::Unauthorized, ..) => self.simple(ctx, &p.head, 401),
            (Verdict::Forbidden, ..) => self.simple(ctx, &p.head, 403),
            (Verdict::Throttled(secs), ..) => {
                let head_only = p.head.method == Method::Head;
                let secs = secs.to_string();
                let extra = [("Retry-After", secs.as_str())];
                // Closed: what a throttled client pipelined behind costs nothing more.
                self.error(ctx, 429, head_only, false, &extra)
            }
            (Verdict::Unavailable, ..) => {
                let head_only = p.head.method == Method::Head;
                self.error(
                    ctx,
                    503,
                    head_only,
                    p.head.keep_alive,
                    &[("Retry-After", "1")],
                )
            }
        }
    }

    /// A short error response to a well-formed request.
    fn simple(&mut self, ctx: &mut Ctx, head: &RequestHead, status: u16) -> Next {
        let head_only = head.method == Method::Head;
        let extra = respond::error_extra(status);
        self.error(ctx, status, head_only, head.keep_alive, extra)
    }

    fn error(
        &mut self,
        ctx: &mut Ctx,
        status: u16,
        head_only: bool,
        keep_alive: bool,
        extra: &[(&str, &str)],
    ) -> Next {
        let keep_alive = keep_alive && !ctx.draining;
        let mut resp = Response::recycle(&mut self.resp);
        respond::error(
            &mut resp,
            &mut ctx.date,
            status,
            head_only,
            keep_alive,
            extra,
        );
        self.start(ctx, resp, None)
    }

    /// Serve a representation the user may fetch.
    fn serve(
        &mut self,
        ctx: &mut Ctx,
        head: RequestHead,
        res: &Resource,
        user: Arc<str>,
        class: Option<ShapeClass>,
    ) -> Next {
        let Some(repr) = Repr::select(&head, res) else {
            return self.simple(ctx, &head, 404);
        };
        let part = match repr {
            Repr::Part(_, part) => Some(part),
            _ => None,
        };
        self.log.serve(&user, &res.key, part);
        let keep_alive = head.keep_alive && !ctx.draining;
        self.shaping
            .bind(&mut ctx.shaping, &mut self.sock, self.token, &user, class);
        let mut resp = Response::recycle(&mut self.resp);
        if ctx.cfg.accounting {
            resp.owner = Some((user, res.key.clone()));
        }
        repr.respond(&mut resp, &mut ctx.date, &head, keep_alive);
        self.size_send_buffer(ctx, resp.body_len());
        let marker = match repr {
            Repr::Part(p, part) if head.method == Method::Get => {
                empty_delivery(head.range.as_deref(), resp.status(), p.file.len())
                    .map(|at| (part, at))
            }
            _ => None,
        };
        self.start(ctx, resp, marker)
    }

    fn start(&mut self, ctx: &mut Ctx, resp: Box<Response>, marker: Option<(u32, u64)>) -> Next {
        ctx.stats.response(resp.status());
        let logging = ctx.access.is_some();
        self.log
            .start(ctx.now, resp.status(), self.written, logging);
        if let Some((user, item)) = &resp.owner {
            let empty = marker.map(|(part, at)| EmptyDelivery {
                user,
                item,
                part,
                at,
                head: resp.head.len() as u64,
            });
            let view = AckView {
                sock: &self.sock,
                ends: self.tls.as_deref().map(|t| &t.ends),
            };
            self.credit.start_response(
                &view,
                &ctx.credits,
                self.written,
                resp.body_len(),
                empty,
                ctx.now,
            );
            // An album zip's empty tracks (see [`respond::EmptyTrack`]).
            for t in &resp.empties {
                let e = EmptyDelivery {
                    user,
                    item,
                    part: t.part,
                    at: 0,
                    head: resp.head.len() as u64 + t.body_end,
                };
                self.credit.add_empty(self.written, e);
            }
        }
        self.resp = Some(resp);
        self.state = State::Send;
        self.deadline = ctx.now + ctx.cfg.send_timeout;
        Next::Write
    }

    /// Describe the next send: the connection's send buffer for bytes in memory, a `sendfile` range for
    /// large file pieces, or a wait for the shaper.
    pub fn prepare_send(&mut self, ctx: &mut Ctx) -> SendPlan {
        if self.tls.is_some() {
            return self.prepare_tls_send(ctx);
        }
        let Some(resp) = self.resp.as_deref() else {
            return SendPlan::Iov {
                len: 0,
                more: false,
            };
        };
        let want = send::shaped_want(resp);
        let head_done = resp.head_rest() == 0;
        let budget =
            match self
                .shaping
                .allowance(&mut ctx.shaping, &self.sock, ctx.now, want, head_done)
            {
                Allowance::Body(n) => n,
                Allowance::Wait(at) => return SendPlan::Wait(at),
            };
        let plan = send::plan(resp, &mut self.send, budget, ctx.cfg.send_path);
        self.planned = match plan {
            SendPlan::Iov { len, .. } | SendPlan::File { len, .. } => len,
            SendPlan::Wait(_) => 0,
        };
        plan
    }

    /// A response begins: a shaped one's send buffer was sized by the shaper; an unshaped
    /// download larger than its starting buffer gets one from [`SendBufferPolicy`] (no syscall
    /// for small responses, nor for a keep-alive connection already sized).
    fn size_send_buffer(&mut self, ctx: &Ctx, body_len: u64) {
        if self.shaping.sized_send_buffer() {
            self.sndbuf.forget();
        } else if body_len > 2 * u64::from(sndbuf::START) {
            if let Some(bytes) = self.sndbuf.start(self.written, ctx.now) {
                self.sock.set_send_buffer(bytes as usize);
            }
        }
    }

    /// A send came back short or would block: the send buffer is full. Let the policy look at
    /// what the client acknowledged (one `TCP_INFO` read, none once at the cap).
    fn on_buffer_full(&mut self, ctx: &Ctx) {
        if !self.sndbuf.may_grow() {
            return;
        }
        let Ok(ack) = self.sock.acked() else {
            return;
        };
        let sample = sndbuf::Sample {
            bytes_acked: ack.bytes_acked,
            window: ack.window,
        };
        let sock = &self.sock;
        let rtt = || sock.rtt().unwrap_or_default();
        let cfg = ctx.shaping.shaper.config();
        if let Some(bytes) = self.sndbuf.on_full(sample, rtt, cfg, ctx.now) {
            self.sock.set_send_buffer(bytes as usize);
        }
    }

    /// The next TLS send: ciphertext still pending, else rustls' own records (handshake,
    /// tickets) and the next batch of the response, encrypted now. Every byte produced is
    /// recorded for the credit policy here, where its stream offset is fixed.
    fn prepare_tls_send(&mut self, ctx: &mut Ctx) -> SendPlan {
        let Some(tls) = self.tls.as_deref_mut() else {
            return SendPlan::Iov {
                len: 0,
                more: false,
            };
        };
        if tls.pending().is_empty() {
            let own = tls.take_records();
            self.written += own;
            self.credit.record_overhead(own);
            let sending = self.state == State::Send && tls.ready();
            if let (true, Some(resp)) = (sending, self.resp.as_deref_mut()) {
                if !resp.done() {
                    let want = send::shaped_want(resp);
                    let head_done = resp.head_rest() == 0;
                    let allowance = self.shaping.allowance(
                        &mut ctx.shaping,
                        &self.sock,
                        ctx.now,
                        want,
                        head_done,
                    );
                    let budget = match allowance {
                        Allowance::Body(n) => n,
                        Allowance::Wait(at) if own == 0 => return SendPlan::Wait(at),
                        Allowance::Wait(_) => 0,
                    };
                    // Encrypt only what the socket will take: while bytes queued earlier are
                    // still unsent (the client or the path is slower than us), one record at a
                    // time, so a stall leaves at most one record here (see [`super::tls`]).
                    if !tls.short && self.sock.unsent().is_ok_and(|u| u > 0) {
                        tls.short = true;
                    }
                    let mut plain = std::mem::take(&mut ctx.scratch);
                    let batch = tls.batch().min(plain.len());
                    let copied = send::copy_next(resp, &mut plain[..batch], budget);
                    let (n, body) = match copied {
                        Ok(nb) => nb,
                        Err(file) => {
                            // Nothing to encrypt: the send planned below is empty (or only
                            // rustls' records), and an empty one closes the connection.
                            file.mark_bad("a read for TLS found the end of the file early");
                            (0, 0)
                        }
                    };
                    let cipher = tls.encrypt(&plain[..n]);
                    ctx.scratch = plain;
                    self.shaping.refund(&mut ctx.shaping, body);
                    send::advance(resp, n, &mut self.credit);
                    self.credit.record_overhead(cipher.saturating_sub(n as u64));
                    self.written += cipher;
                    tls.ends.push(self.written);
                }
            }
        }
        let pending = tls.pending();
        self.send.point_at(pending);
        SendPlan::Iov {
            len: pending.len(),
            more: false,
        }
    }

    /// A TLS send finished with `res` (its bytes were recorded when they were encrypted).
    fn on_tls_sent(&mut self, ctx: &mut Ctx, res: io::Result<usize>) -> Next {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Next::Close;
        };
        let len = tls.pending().len();
        let n = match res {
            Ok(0) if len > 0 => return Next::Close,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                tls.short = true;
                return Next::Write;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Next::Write,
            Err(_) => {
                ctx.stats.add(&ctx.stats.send_errors, 1);
                return Next::Close;
            }
        };
        if len == 0 {
            // Nothing could be produced: a content file that reads empty (truncated).
            return Next::Close;
        }
        tls.short = n < len;
        tls.sent(n);
        ctx.stats.add(&ctx.stats.bytes_sent, n as u64);
        if self.state == State::Send {
            self.deadline = ctx.now + ctx.cfg.send_timeout;
        }
        if !tls.pending().is_empty() || tls.wants_write() {
            return Next::Write;
        }
        match self.resp.as_deref() {
            Some(resp) if self.state == State::Send => {
                if resp.done() {
                    tls.release_buffers();
                    self.finish_response(ctx)
                } else {
                    Next::Write
                }
            }
            _ => {
                tls.release_buffers();
                if self.lingering {
                    return Next::Read;
                }
                // The handshake flight went out: read the client's answer (or its request).
                Next::Read
            }
        }
    }

    /// The send that held the shaper's grant is over and took `sent_body` body bytes (see
    /// [`ConnShaping::refund`]).
    pub fn refund_grant(&mut self, ctx: &mut Ctx, sent_body: u64) {
        self.shaping.refund(&mut ctx.shaping, sent_body);
    }

    /// A send finished with `res`.
    pub fn on_sent(&mut self, ctx: &mut Ctx, res: io::Result<usize>) -> Next {
        if self.tls.is_some() {
            return self.on_tls_sent(ctx, res);
        }
        // Whatever the outcome, the grant this send held is settled now: the body bytes the
        // kernel did not take (all of them when it failed or would have blocked) go back.
        let head_rest = self.resp.as_deref().map_or(0, Response::head_rest);
        let sent = *res.as_ref().unwrap_or(&0);
        self.refund_grant(ctx, sent.saturating_sub(head_rest) as u64);
        let full = match &res {
            Ok(n) => *n > 0 && *n < self.planned,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        if full {
            self.on_buffer_full(ctx);
        }
        let n = match res {
            Ok(0) => {
                // Nothing went out although the socket took the send: a content file shrank
                // under sendfile (or the peer is gone). Logged once per blob, not per request.
                if let Some(f) = self.resp.as_deref().and_then(Response::current_file) {
                    f.mark_bad("a send from it made no progress (end of file)");
                }
                return Next::Close;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                return Next::Write;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Next::Write,
            Err(e) => {
                ctx.stats.add(&ctx.stats.send_errors, 1);
                if e.raw_os_error() == Some(libc::EFAULT) {
                    if let Some(f) = self.resp.as_deref().and_then(Response::current_file) {
                        f.mark_bad("a send from it failed with EFAULT (truncated)");
                    }
                }
                return Next::Close;
            }
        };
        let Some(resp) = self.resp.as_deref_mut() else {
            return Next::Close;
        };
        self.deadline = ctx.now + ctx.cfg.send_timeout;
        self.written += n as u64;
        ctx.stats.add(&ctx.stats.bytes_sent, n as u64);
        send::advance(resp, n, &mut self.credit);
        if !resp.done() {
            return Next::Write;
        }
        self.finish_response(ctx)
    }

    fn finish_response(&mut self, ctx: &mut Ctx) -> Next {
        self.log.finish(ctx.now, self.written);
        let keep_alive = self.resp.as_ref().is_some_and(|r| r.keep_alive) && !ctx.draining;
        if let (false, Some(tls)) = (keep_alive, self.tls.as_deref_mut()) {
            if !tls.notified {
                // The last response: close_notify goes out before our FIN (sent as overhead;
                // this is called again once it has left).
                let n = tls.close_notify();
                if n > 0 {
                    self.written += n;
                    self.credit.record_overhead(n);
                    tls.ends.push(self.written);
                    return Next::Write;
                }
            }
        }
        if let Some(r) = &mut self.resp {
            // Drop file references now; keep the head buffer for the next response.
            r.pieces.clear();
            if r.head.capacity() > 4096 {
                r.head = Vec::new();
            }
        }
        if !keep_alive {
            if self.credit.in_flight() {
                // Close our side and wait (briefly) for the client's FIN: it proves the client
                // read the tail of the response, which is then credited.
                self.sock.shutdown_write();
                self.lingering = true;
                self.state = State::Head;
                self.resp = None;
                self.deadline = ctx.now + LINGER;
                return Next::Read;
            }
            return Next::Close;
        }
        self.state = State::Head;
        self.head_started = false;
        self.deadline = ctx.now + ctx.cfg.idle_timeout;
        if !self.inbuf.is_empty() {
            self.head_started = true;
            self.deadline = ctx.now + ctx.cfg.header_timeout;
            return self.parse_buffered(ctx);
        }
        // Idle connections keep no response buffer: memory per idle connection stays small.
        self.resp = None;
        Next::Read
    }

    /// Credit content the client's TCP acknowledged (see [`ConnCredit::account`]).
    /// `closing`: the connection is ending now.
    pub fn account(&mut self, ctx: &mut Ctx, proof: bool, closing: bool) {
        let idle = self.resp.is_none();
        let view = AckView {
            sock: &self.sock,
            ends: self.tls.as_deref().map(|t| &t.ends),
        };
        self.credit
            .account(&view, &ctx.stats, &mut ctx.credits, proof, closing, idle);
    }

    /// The sweep's periodic credit (see [`ConnCredit::sweep`]).
    pub fn sweep_account(&mut self, ctx: &mut Ctx) {
        let sending = self.resp.is_some();
        let view = AckView {
            sock: &self.sock,
            ends: self.tls.as_deref().map(|t| &t.ends),
        };
        self.credit
            .sweep(&view, &ctx.stats, &mut ctx.credits, ctx.now, sending);
    }

    /// The connection is going away: credit what was delivered, release its shaper slot.
    pub fn on_close(&mut self, ctx: &mut Ctx) {
        self.account(ctx, false, true);
        self.shaping.close(&mut ctx.shaping);
        self.end_log(ctx, true);
    }

    /// The response being sent, for `GET /downloads` (see [`ConnLog::live`]).
    pub fn live_download(&mut self, now: Instant) -> Option<crate::accesslog::LiveDownload> {
        self.log.live(now, self.written, self.credit.delivered())
    }

    /// The current response is over: count what was acknowledged and hand its line to the
    /// access log (see [`crate::accesslog`]). At a new request the client read all of it; at
    /// the close, what its TCP acknowledged is read once.
    fn end_log(&mut self, ctx: &mut Ctx, closing: bool) {
        if !self.log.open {
            return;
        }
        let acked = closing.then(|| self.sock.acked().map_or(0, |a| a.bytes_acked));
        if ctx.access.is_some() && !self.log.client_known {
            self.log.client = self.sock.peer_ip();
            self.log.client_known = true;
        }
        let logging = ctx.access.is_some();
        if let Some((acked, record)) = self.log.take(ctx.now, self.written, acked, logging) {
            ctx.stats.add(&ctx.stats.bytes_acked, acked);
            if let (Some(log), Some(r)) = (&ctx.access, record) {
                log.log(r);
            }
        }
    }
}

/// A GET of a part that delivers no content byte yet says something about delivery: the
/// content offset to credit as an empty range `at..at` once the client's TCP acknowledged the
/// head (see [`ConnCredit::start_response`]).
///
/// - A `200` of an empty part: its whole content (nothing) was delivered: `0`.
/// - A `416` for `Range: bytes=LEN-` (`LEN` the part's length): the client resumes after the
///   last byte, so it holds them all (curl `-C -`, `wget -c` of a finished file): `LEN`. It
///   credits nothing by itself; it is the resume offset the ledger's evidence rule needs when
///   weir died after writing the tail and the kernel delivered it (see
///   [`crate::completion::ledger`]).
fn empty_delivery(range: Option<&str>, status: u16, len: u64) -> Option<u64> {
    match status {
        200 if len == 0 => Some(0),
        416 => {
            let spec = range?.trim();
            let first = spec.strip_prefix("bytes=")?.trim().strip_suffix('-')?;
            (first.trim().parse::<u64>().ok()? == len && len > 0).then_some(len)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven over a [`FakeSocket`]: what a driver would do, step by step,
    //! with the kernel's answers scripted.

    use std::collections::HashMap;
    use std::time::SystemTime;

    use weir_shaper::{FakeClock, Rate, Shaper, ShaperConfig};

    use super::*;
    use crate::completion::AckState;
    use crate::config::ServeConfig;
    use crate::http::{DateCache, Limits};
    use crate::server::auth::{AuthCache, AuthPool, Job};
    use crate::server::credit::CreditBatch;
    use crate::server::resources::Part;
    use crate::server::segment::MappedFile;
    use crate::server::shaping::{ShaperWaits, Shaping};
    use crate::server::socket::FakeSocket;
    use crate::storage::ItemKind;

    const AUTH: &str = "Basic YWxpY2U6cHc="; // alice:pw

    struct Fixture {
        ctx: Ctx,
        clock: Arc<FakeClock>,
        jobs: crossbeam_channel::Receiver<Job>,
        _dir: tempfile::TempDir,
    }

    /// A worker context serving item `song` (`len` bytes) to `alice`, whose credentials and
    /// cart grant are already cached; `rate`: alice's shaped rate.
    fn fixture(len: usize, rate: Rate) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song");
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let part = Part {
            file: Arc::new(MappedFile::open(&path, len as u64).unwrap()),
            etag: "\"e\"".into(),
            last_modified: SystemTime::UNIX_EPOCH,
            name: "song".into(),
            disposition: "attachment; filename=\"song\"".into(),
            content_type: "application/octet-stream",
        };
        let res = Arc::new(Resource {
            id: "song".into(),
            key: Arc::from("song"),
            kind: ItemKind::File,
            parts: vec![part],
            zip: None,
        });
        let now = Instant::now();
        let mut cache = AuthCache::new(
            HashMap::from([("song".to_string(), res)]),
            Duration::from_secs(60),
        );
        let alice: Arc<str> = Arc::from("alice");
        cache
            .creds
            .insert(AUTH.into(), (alice, now + Duration::from_secs(3600)));
        cache
            .grants
            .insert("alice\0song".into(), now + Duration::from_secs(3600));
        let clock = Arc::new(FakeClock::new());
        let shaper = Shaper::with_clock(
            ShaperConfig {
                refill_period: Duration::from_millis(100),
                ..Default::default()
            },
            clock.clone(),
        );
        let (pool, jobs) = AuthPool::detached();
        let ctx = Ctx {
            id: 0,
            cfg: Arc::new(ServeConfig::new(dir.path().into())),
            limits: Limits::default(),
            date: DateCache::new(),
            secret: Arc::new(vec![1; 32]),
            cache,
            pool,
            now,
            draining: false,
            scratch: vec![0u8; 4096].into_boxed_slice(),
            credits: CreditBatch::new(None),
            stats: Arc::default(),
            shaping: Shaping::new(
                shaper,
                crate::server::shaping::LiveRates::new(rate, HashMap::new()),
            ),
            access: None,
        };
        Fixture {
            ctx,
            clock,
            jobs,
            _dir: dir,
        }
    }

    fn get(path: &str, extra: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n{extra}\r\n")
            .into_bytes()
    }

    /// A connection that received `request` (the driver saw it readable).
    fn conn_with(f: &mut Fixture, request: Vec<u8>) -> (Box<Conn<FakeSocket>>, Next) {
        let sock = FakeSocket {
            incoming: request,
            ..Default::default()
        };
        let mut c = Conn::new(sock, 1, f.ctx.now, &f.ctx);
        let next = c.on_readable(&mut f.ctx);
        (c, next)
    }

    /// The bytes the planned `sendmsg` would send.
    fn planned(c: &Conn<FakeSocket>) -> Vec<u8> {
        let mut out = Vec::new();
        for v in c.send_buf().iov() {
            // SAFETY: test-only read of the planned iovecs, which point into the response's
            // head or a mapping of a test file nobody truncates (see `SendBuf`).
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    fn iov_len(plan: SendPlan) -> usize {
        match plan {
            SendPlan::Iov { len, .. } => len,
            other => panic!("expected a sendmsg, got {other:?}"),
        }
    }

    #[test]
    fn a_partial_send_and_eagain_resume_where_the_kernel_stopped() {
        let mut f = fixture(1000, Rate::Unlimited);
        let (mut c, next) = conn_with(&mut f, get("/d/song", ""));
        assert_eq!(next, Next::Write);
        let total = iov_len(c.prepare_send(&mut f.ctx));
        let first = planned(&c);
        assert_eq!(first.len(), total);
        assert!(first.starts_with(b"HTTP/1.1 200 OK\r\n"), "{first:?}");
        assert!(first.ends_with(&[7u8; 1000]));

        // The kernel took 10 bytes.
        assert_eq!(c.on_sent(&mut f.ctx, Ok(10)), Next::Write);
        assert_eq!(iov_len(c.prepare_send(&mut f.ctx)), total - 10);
        assert_eq!(planned(&c), first[10..]);

        // The socket is full: wait for room, then send the same bytes again.
        let eagain = Err(io::ErrorKind::WouldBlock.into());
        assert_eq!(c.on_sent(&mut f.ctx, eagain), Next::Write);
        assert!(!c.writable);
        assert_eq!(iov_len(c.prepare_send(&mut f.ctx)), total - 10);
        assert_eq!(planned(&c), first[10..]);

        // The rest goes: keep-alive, so the connection waits for the next request.
        assert_eq!(c.on_sent(&mut f.ctx, Ok(total - 10)), Next::Read);
        assert!(c.is_idle());
        let stats = &f.ctx.stats;
        assert_eq!(
            stats.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
            total as u64
        );
    }

    /// An unshaped download starts with a small send buffer that grows on a buffer-full only
    /// once the client acknowledged enough with its window open; a small response or a shaped
    /// one is left to its own sizing.
    #[test]
    fn an_unshaped_download_grows_its_send_buffer_once_the_client_reads() {
        let mut f = fixture(4 << 20, Rate::Unlimited);
        let (mut c, next) = conn_with(&mut f, get("/d/song", ""));
        assert_eq!(next, Next::Write);
        assert_eq!(c.sock.sndbuf, Some(sndbuf::START as usize));
        let ack = |bytes_acked, window| {
            Some(AckState {
                bytes_acked,
                window: Some(window),
                peer_ended: false,
            })
        };
        // Full while the client holds 128 KiB unread with its window shut: no growth.
        c.sock.ack = ack(128 << 10, 0);
        c.prepare_send(&mut f.ctx);
        assert_eq!(c.on_sent(&mut f.ctx, Ok(1)), Next::Write);
        assert_eq!(c.sock.sndbuf, Some(sndbuf::START as usize));
        // It read 8 MiB in 5 ms: the next buffer-full takes it to the cap.
        c.sock.ack = ack(8 << 20, 60_000);
        f.ctx.now += Duration::from_millis(5);
        c.prepare_send(&mut f.ctx);
        let eagain = Err(io::ErrorKind::WouldBlock.into());
        assert_eq!(c.on_sent(&mut f.ctx, eagain), Next::Write);
        assert_eq!(c.sock.sndbuf, Some(sndbuf::CAP as usize));

        // A small response: no syscall.
        let mut f = fixture(1000, Rate::Unlimited);
        let (c, _) = conn_with(&mut f, get("/d/song", ""));
        assert_eq!(c.sock.sndbuf, None);

        // A shaped download: sized from its share, never by the policy.
        let mut f = fixture(4 << 20, Rate::BytesPerSec(100_000_000));
        let (mut c, _) = conn_with(&mut f, get("/d/song", ""));
        let shaped = c.sock.sndbuf;
        assert!(shaped.is_some());
        c.sock.ack = ack(1 << 20, 60_000);
        f.ctx.now += Duration::from_millis(5);
        c.prepare_send(&mut f.ctx);
        c.on_sent(&mut f.ctx, Ok(1));
        assert_eq!(c.sock.sndbuf, shaped);
    }

    /// A large response to a client that reads the first bytes and stops with its window shut:
    /// when the send times out, nothing it acknowledged inside its first receive buffer counts.
    #[test]
    fn what_an_empty_delivery_proves() {
        assert_eq!(empty_delivery(None, 200, 0), Some(0));
        assert_eq!(empty_delivery(None, 200, 10), None);
        assert_eq!(empty_delivery(Some("bytes=10-"), 416, 10), Some(10));
        assert_eq!(empty_delivery(Some("bytes=11-"), 416, 10), None);
        assert_eq!(empty_delivery(Some("bytes=10-20"), 416, 10), None);
        assert_eq!(empty_delivery(Some("bytes=0-"), 416, 0), None);
    }

    /// The same client with its window open when the connection ends is credited its acks.
    #[test]
    fn a_client_that_stops_reading_is_credited_nothing_at_the_send_timeout() {
        for (window, credited) in [(0, false), (1000, true)] {
            let mut f = fixture(1 << 20, Rate::Unlimited);
            let sock = FakeSocket {
                incoming: get("/d/song", ""),
                ack: Some(AckState {
                    bytes_acked: 0,
                    window: Some(64 * 1024),
                    peer_ended: false,
                }),
                ..Default::default()
            };
            let mut c = Conn::new(sock, 1, f.ctx.now, &f.ctx);
            assert_eq!(c.on_readable(&mut f.ctx), Next::Write);
            let head_len = c.resp.as_deref().map_or(0, Response::head_rest);
            let len = iov_len(c.prepare_send(&mut f.ctx));
            assert_eq!(
                len,
                head_len + (1 << 20),
                "the head and the first 1 MiB chunk"
            );
            // 300 KB went out, then the client stopped reading.
            assert_eq!(c.on_sent(&mut f.ctx, Ok(300_000)), Next::Write);
            c.sock.ack = Some(AckState {
                bytes_acked: 100_000,
                window: Some(window),
                peer_ended: false,
            });
            let later = f.ctx.now + f.ctx.cfg.send_timeout;
            assert_eq!(c.on_deadline(later), Some(Next::Close));
            c.on_close(&mut f.ctx);
            let got: u64 = f
                .ctx
                .credits
                .pending()
                .iter()
                .map(|cr| cr.range.end - cr.range.start)
                .sum();
            let expect = if credited {
                100_000 - head_len as u64
            } else {
                0
            };
            assert_eq!(got, expect, "window {window}");
        }
    }

    #[test]
    fn a_drain_closes_idle_connections_and_lets_a_response_finish() {
        let mut f = fixture(1000, Rate::Unlimited);
        let idle = Conn::new(FakeSocket::default(), 2, f.ctx.now, &f.ctx);
        let mut idle = idle;
        assert_eq!(idle.on_drain(), Some(Next::Close));

        let (mut c, next) = conn_with(&mut f, get("/d/song", ""));
        assert_eq!(next, Next::Write);
        f.ctx.draining = true;
        assert_eq!(c.on_drain(), None, "busy: finishes its response");
        let total = iov_len(c.prepare_send(&mut f.ctx));
        // Not keep-alive any more; its bytes are not all acknowledged, so it closes its side
        // and waits for the client's FIN, which proves the client read the tail.
        assert_eq!(c.on_sent(&mut f.ctx, Ok(total)), Next::Read);
        assert!(c.sock.shut_write);
        c.sock.ack = Some(AckState {
            bytes_acked: total as u64 + 1,
            window: Some(0),
            peer_ended: true,
        });
        c.sock.fin = true;
        assert_eq!(c.on_readable(&mut f.ctx), Next::Close);
        let credits = f.ctx.credits.pending();
        assert_eq!(credits.len(), 1);
        assert_eq!(credits[0].range, 0..1000);
    }

    /// A shaped download: once its tokens are spent its body waits for the shaper, the
    /// connection is parked, and the shaper's wake-up brings a grant the next send carries (no
    /// more than the shaper's largest grant).
    #[test]
    fn a_shaper_wait_parks_the_connection_until_a_grant() {
        let rate = Rate::BytesPerSec(64 * 1024);
        let mut f = fixture(4 << 20, rate);
        let (mut c, next) = conn_with(&mut f, get("/d/song", ""));
        assert_eq!(next, Next::Write);
        let mut waits = ShaperWaits::default();
        let mut parked = 0;
        let mut body_after_park = 0;
        for _ in 0..200 {
            match c.prepare_send(&mut f.ctx) {
                SendPlan::Wait(at) => {
                    // The driver parks it; time passes; the wake-up comes.
                    parked += 1;
                    c.shaping.wait = Some(at);
                    waits.park(c.token, at);
                    let dt = at.saturating_duration_since(f.ctx.now);
                    f.clock.advance(dt);
                    f.ctx.now = at;
                    let woken = waits.due(&mut f.ctx.shaping, f.ctx.now, |t, at| {
                        t == c.token
                            && (at.is_none() || c.shaping.wait == at)
                            && c.shaping.wait.take().is_some()
                    });
                    assert_eq!(woken, vec![c.token], "woken once, at its deadline");
                }
                SendPlan::Iov { len, .. } => {
                    let head = c.resp.as_deref().map_or(0, Response::head_rest);
                    let body = len - head;
                    assert!(body <= 256 * 1024, "no more than the largest grant: {body}");
                    assert_eq!(c.on_sent(&mut f.ctx, Ok(len)), Next::Write);
                    if parked > 0 && body > 0 {
                        body_after_park = body;
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(parked > 0, "a shaped download runs out of tokens and waits");
        assert!(body_after_park > 0, "woken, it sends a grant");
        assert!(
            c.sock.sndbuf.is_some(),
            "a shaped connection sizes its send buffer"
        );
    }

    #[test]
    fn a_request_the_caches_cannot_answer_parks_until_the_pool_does() {
        let mut f = fixture(1000, Rate::Unlimited);
        // No credentials at all: 401 at once, and the connection stays open.
        let (mut c, next) = conn_with(&mut f, b"GET /d/song HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
        assert_eq!(next, Next::Write);
        let len = iov_len(c.prepare_send(&mut f.ctx));
        assert!(planned(&c).starts_with(b"HTTP/1.1 401 "));
        assert_eq!(c.on_sent(&mut f.ctx, Ok(len)), Next::Read);

        // Credentials the worker has not verified yet: parked, one job for the pool.
        let bob = "GET /d/song HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Ym9iOnB3\r\n\r\n";
        let (mut c, next) = conn_with(&mut f, bob.as_bytes().to_vec());
        assert_eq!(next, Next::Park);
        let job = f.jobs.try_recv().expect("a job for the auth pool");
        assert_eq!((job.conn, job.item.as_str()), (c.token, "song"));
        assert_eq!(
            c.on_deadline(f.ctx.now + Duration::from_secs(3600)),
            None,
            "no timeout while parked"
        );
        let res = f.ctx.cache.resources.get("song").cloned();
        let reply = Reply {
            conn: c.token,
            verdict: Verdict::Allowed,
            user: Some(Arc::from("bob")),
            verified_header: Some("Basic Ym9iOnB3".into()),
            resource: res,
            user_rate: None,
        };
        assert_eq!(c.on_auth(&mut f.ctx, reply), Next::Write);
        iov_len(c.prepare_send(&mut f.ctx));
        assert!(planned(&c).starts_with(b"HTTP/1.1 200 OK\r\n"));
        // The worker learnt bob: his next connection is served from the caches.
        let (_, next) = conn_with(&mut f, bob.as_bytes().to_vec());
        assert_eq!(next, Next::Write);
        assert!(f.jobs.try_recv().is_err());
    }
}
