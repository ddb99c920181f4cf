//! The connection state machine, shared by the io_uring and epoll drivers.
//!
//! A driver tells a [`Conn`] what happened (readable, some bytes sent, the auth pool answered, a
//! deadline passed) and the connection answers with what it needs next ([`Next`]): read more,
//! write what [`Conn::prepare_send`] describes, wait (parked on the auth pool), or close. The
//! driver decides *how*: an io_uring SENDMSG or a direct `sendmsg`, a POLL_ADD or an epoll edge.
//! Both drivers read with `recv` once the socket is readable, so idle keep-alive connections own
//! no read buffer (a few hundred bytes each in all).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::completion::{tcp_acked, unsent_bytes, AckState, StreamMap, ZipSlice};
use crate::config::SendPath;
use crate::http::{
    self, ContentRange, Method, Multipart, Parsed, Piece as HttpPiece, Precondition, RangeOutcome,
    RequestError, RequestHead, ResponseHead, Route, Validators,
};
use crate::store::ItemKind;
use crate::token;

use super::auth::{Claim, Job, Reply, Verdict};
use super::resources::{Part, Resource, ZipRep};
use super::segment::MappedFile;
use super::sys;
use super::worker::{Credit, Ctx};
use weir_shaper::{ConnKey, Grant, Rate};

/// Largest body chunk handed to the kernel in one send when the connection is not shaped.
const MAX_CHUNK: u64 = 1 << 20;
/// File pieces at least this large go out with `sendfile(2)` (page-cache pages attached to the
/// socket, one copy fewer than sending from the mapping); smaller ones go with the head in one
/// `sendmsg` from the mapping.
const SENDFILE_MIN: u64 = 64 * 1024;
/// Largest `sendfile` chunk.
const MAX_SENDFILE_CHUNK: u64 = 4 << 20;

/// How the driver should carry out the next send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPlan {
    /// `sendmsg` with `Conn::iov`/`Conn::msg` (`more`: a sendfile follows, set MSG_MORE).
    Iov { len: usize, more: bool },
    /// `sendfile(sock, fd, offset, len)`.
    File { fd: RawFd, offset: u64, len: usize },
    /// The shaper has no bytes for this connection until then: wait, then ask again.
    Wait(Instant),
}

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
}

/// A signed link's rate class: shaped as its own class `user/NAME` at the class's rate.
type ShapeClass = (Arc<str>, weir_shaper::Rate);

/// One body piece: literal bytes (multipart boundaries) or a range of a mapped file.
enum BodyPiece {
    Literal(Vec<u8>),
    File {
        file: Arc<MappedFile>,
        start: u64,
        end: u64,
        /// Which part of the item these bytes are (0 for a file, the track index in an album).
        part: u32,
    },
}

/// The response being sent.
struct Response {
    /// Whose download this is, when its body is catalog content that counts toward completion.
    owner: Option<(Arc<str>, Arc<str>)>,
    head: Vec<u8>,
    head_sent: usize,
    pieces: Vec<BodyPiece>,
    piece: usize,
    /// Offset inside the current piece.
    offset: u64,
    keep_alive: bool,
}

impl Response {
    fn done(&self) -> bool {
        self.head_sent == self.head.len() && self.piece == self.pieces.len()
    }
}

/// Delivered-bytes accounting for one connection (see `Conn::account`).
struct Accounting {
    /// Which stream offsets carried which content.
    map: StreamMap,
    /// Tags used in `map`: (user, item, part).
    targets: Vec<(Arc<str>, Arc<str>, u32)>,
    /// Scratch for newly acknowledged ranges.
    acked: Vec<(u32, std::ops::Range<u64>)>,
    /// Stream bytes the client provably read (it sent a later request).
    read_upto: u64,
    /// The client's receive window (`tcpi_snd_wnd`) and `tcpi_bytes_acked` when the current
    /// large response started: its buffer then held about twice that window at most.
    start_window: u64,
    start_acked: u64,
    /// When the sweep may poll this connection next while a response is still being sent.
    next_poll: Instant,
}

impl Accounting {
    /// Whether a `TCP_INFO` poll now could credit anything (outside a close or a proof of
    /// reading). While all that was written fits in the client's first receive buffer, a poll
    /// credits no more than the client provably read (see `Conn::account`): once that much is
    /// credited, there is nothing to learn. A slow (shaped) download spends its first two
    /// windows there. (`+ 1`: `tcpi_bytes_acked` counts a FIN's sequence number.)
    fn poll_can_credit(&self) -> bool {
        let (written, acked) = (self.map.written(), self.map.acked());
        let within_first_buffer = self.start_window > 0
            && (written + 1).saturating_sub(self.start_acked) <= 2 * self.start_window;
        !within_first_buffer || acked < self.start_acked.max(self.read_upto).min(written)
    }

    fn tag(&mut self, user: &Arc<str>, item: &Arc<str>, part: u32) -> u32 {
        if let Some(i) = self
            .targets
            .iter()
            .position(|(u, it, p)| *p == part && u == user && it == item)
        {
            return i as u32;
        }
        self.targets.push((user.clone(), item.clone(), part));
        (self.targets.len() - 1) as u32
    }
}

pub struct Conn {
    pub fd: RawFd,
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
    resp: Option<Box<Response>>,
    /// INVARIANT: while a send is in flight, `iov` and `msg` point into `resp`'s head, a literal
    /// piece, or a mapping held alive by `resp`; none of those move or drop until the send
    /// completes (the connection is boxed and `resp` is only replaced between sends).
    pub iov: [libc::iovec; 2],
    pub msg: libc::msghdr,
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
    /// Set once the connection carried content that counts toward completion.
    acct: Option<Box<Accounting>>,
    /// The server closed its side after a response and waits for the client's FIN.
    lingering: bool,
    /// The shaper's key for this connection and the user it is shaped as.
    shaped: Option<(ConnKey, Arc<str>)>,
    /// Body bytes the shaper granted for the send in flight (unsent ones are refunded).
    granted: u64,
    /// Consecutive times a shaped send found the last grant still unsent (backoff exponent).
    unsent_waits: u8,
    /// Parked until then by the shaper (`SendPlan::Wait`), with no operation in flight: a timer
    /// or the shaper's `ready` list may wake it. The drivers set and clear it.
    pub shaper_wait: Option<Instant>,
}

impl Conn {
    pub fn new(fd: RawFd, token: u64, now: Instant, ctx: &Ctx) -> Box<Conn> {
        Box::new(Conn {
            fd,
            token,
            state: State::Head,
            inbuf: Vec::new(),
            deadline: now + ctx.cfg.header_timeout,
            head_started: false,
            pending: None,
            resp: None,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: an all-zero msghdr is valid (no name, no iov, no control data).
            msg: unsafe { std::mem::zeroed() },
            in_flight: 0,
            readable: true,
            writable: true,
            want: Next::Read,
            closing: false,
            written: 0,
            acct: None,
            lingering: false,
            shaped: None,
            granted: 0,
            unsent_waits: 0,
            shaper_wait: None,
        })
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
                tracing::debug!(fd = self.fd, "request head timeout")
            }
            State::Head => tracing::trace!(fd = self.fd, "idle timeout"),
            _ => tracing::debug!(fd = self.fd, "send made no progress: timeout"),
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
            let n = match sys::recv(self.fd, &mut scratch) {
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

    /// Authenticate and authorize, from the worker's caches when possible.
    fn begin_request(&mut self, ctx: &mut Ctx, head: RequestHead) -> Next {
        // A client sends its next request after reading the previous response. Only mark it:
        // the sweep polls TCP_INFO, so keep-alive requests cost no extra syscall.
        if let Some(a) = self.acct.as_deref_mut() {
            a.read_upto = a.map.written();
        }
        let item = match http::route(&head.target) {
            Route::NotFound => return self.simple(ctx, &head, 404),
            Route::Item(id) => http::zip_album(id).unwrap_or(id),
            Route::Track { album, .. } => album,
            Route::Zip(album) => album,
        };
        // Signed link: verified here, no store round trip.
        let claim_user: Option<Arc<str>>;
        let mut class: Option<ShapeClass> = None;
        if let Some(q) = head.query.as_deref().filter(|q| token::has_signature(q)) {
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match token::verify(&ctx.secret, item, q, now_unix) {
                Ok(claims) => {
                    if let Some(name) = &claims.rate_class {
                        // A class the server does not know cannot be honoured: refuse the link.
                        let Some(rate) = ctx.cfg.rate_classes.get(name) else {
                            return self.simple(ctx, &head, 403);
                        };
                        class = Some((Arc::from(format!("{}/{name}", claims.user)), *rate));
                    }
                    claim_user = Some(Arc::from(claims.user.as_str()));
                }
                Err(token::TokenError::Malformed) => return self.simple(ctx, &head, 400),
                Err(_) => return self.simple(ctx, &head, 403),
            }
        } else if let Some(auth) = head.authorization.as_deref() {
            claim_user = ctx.cache.user_for(auth, ctx.now);
        } else {
            return self.simple(ctx, &head, 401);
        }
        if let Some(user) = &claim_user {
            if ctx.cache.granted(user, item, ctx.now) {
                if let Some(res) = ctx.cache.resources.get(item).cloned() {
                    return self.serve(ctx, head, &res, user.clone(), class);
                }
            }
        }
        // Miss: park and ask the pool.
        let claim = match claim_user {
            Some(user) => Claim::Link {
                user: user.to_string(),
            },
            None => Claim::Basic(head.authorization.clone().unwrap_or_default()),
        };
        let job = Job {
            worker: ctx.id,
            conn: self.token,
            claim,
            item: item.to_string(),
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
        self.pending = Some(Box::new(Pending { head, item, class }));
        self.state = State::Auth;
        Next::Park
    }

    /// The auth pool answered for this connection's parked request.
    pub fn on_auth(&mut self, ctx: &mut Ctx, reply: Reply) -> Next {
        let Some(p) = self.pending.take() else {
            return Next::Close;
        };
        ctx.cache.learn(&reply, &p.item, ctx.now);
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
        let extra: &[(&str, &str)] = match status {
            401 => &[(
                "WWW-Authenticate",
                "Basic realm=\"weir\", charset=\"UTF-8\"",
            )],
            _ => &[],
        };
        self.error(
            ctx,
            status,
            head.method == Method::Head,
            head.keep_alive,
            extra,
        )
    }

    fn error(
        &mut self,
        ctx: &mut Ctx,
        status: u16,
        head_only: bool,
        keep_alive: bool,
        extra: &[(&str, &str)],
    ) -> Next {
        let body = http::error_body(status);
        let keep_alive = keep_alive && !ctx.draining;
        let mut resp = self.take_response();
        http::write_head(
            &mut resp.head,
            &ResponseHead {
                status,
                content_length: body.len() as u64,
                content_type: "text/plain; charset=utf-8",
                keep_alive,
                etag: None,
                last_modified: None,
                content_range: None,
                accept_ranges: false,
                extra,
            },
            ctx.date.now(),
        );
        if !head_only {
            resp.head.extend_from_slice(body);
        }
        resp.keep_alive = keep_alive;
        self.start(ctx, resp)
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
        let repr = match (http::route(&head.target), res.kind, &res.zip) {
            (Route::Item(id), ItemKind::File, _) if http::zip_album(id).is_none() => {
                res.parts.first().map(|p| Repr::Part(p, 0))
            }
            (Route::Track { n, .. }, ItemKind::Album, _) => {
                let i = n as usize - 1;
                res.parts.get(i).map(|p| Repr::Part(p, i as u32))
            }
            (Route::Item(_) | Route::Zip(_), ItemKind::Album, Some(z)) => Some(Repr::Zip(res, z)),
            _ => None,
        };
        let Some(repr) = repr else {
            return self.simple(ctx, &head, 404);
        };
        let len = repr.len();
        let keep_alive = head.keep_alive && !ctx.draining;
        let head_only = head.method == Method::Head;
        let v = repr.validators();
        let ctype = repr.content_type();
        self.bind_shaper(ctx, &user, class);
        let mut resp = self.take_response();
        if ctx.cfg.accounting {
            resp.owner = Some((user, res.key.clone()));
        }
        let honor_range = match http::evaluate_preconditions(&head, &v) {
            Precondition::NotModified => {
                write_representation_head(ctx, &mut resp, 304, len, ctype, keep_alive, &v, None);
                resp.keep_alive = keep_alive;
                return self.start(ctx, resp);
            }
            Precondition::Proceed { honor_range } => honor_range,
        };
        let outcome = match head.range.as_deref() {
            Some(r) if honor_range => http::resolve_ranges(r, len),
            _ => RangeOutcome::Full,
        };
        match outcome {
            RangeOutcome::Full => {
                write_representation_head(ctx, &mut resp, 200, len, ctype, keep_alive, &v, None);
                if !head_only {
                    repr.emit(0..len, &mut resp.pieces);
                }
            }
            RangeOutcome::Unsatisfiable => {
                let body = http::error_body(416);
                let cr = Some(ContentRange::Unsatisfiable { len });
                let text = "text/plain; charset=utf-8";
                write_representation_head(
                    ctx,
                    &mut resp,
                    416,
                    body.len() as u64,
                    text,
                    keep_alive,
                    &v,
                    cr,
                );
                if !head_only {
                    resp.head.extend_from_slice(body);
                }
            }
            RangeOutcome::Partial(ranges) => {
                let ranges = ranges.as_slice();
                if let [r] = ranges {
                    let cr = Some(ContentRange::of(r, len));
                    write_representation_head(
                        ctx,
                        &mut resp,
                        206,
                        r.end - r.start,
                        ctype,
                        keep_alive,
                        &v,
                        cr,
                    );
                    if !head_only {
                        repr.emit(r.clone(), &mut resp.pieces);
                    }
                } else {
                    let mp = Multipart::new(ranges, len, ctype, &http::boundary_for(v.etag));
                    let mp_type = mp.content_type();
                    write_representation_head(
                        ctx,
                        &mut resp,
                        206,
                        mp.content_length(),
                        &mp_type,
                        keep_alive,
                        &v,
                        None,
                    );
                    if !head_only {
                        for p in mp.pieces() {
                            match p {
                                HttpPiece::Literal(bytes) => {
                                    resp.pieces.push(BodyPiece::Literal(bytes.clone()))
                                }
                                HttpPiece::File(r) => repr.emit(r.clone(), &mut resp.pieces),
                            }
                        }
                    }
                }
            }
        }
        resp.keep_alive = keep_alive;
        self.start(ctx, resp)
    }

    /// A fresh (or recycled) response buffer.
    fn take_response(&mut self) -> Box<Response> {
        match self.resp.take() {
            Some(mut r) => {
                r.owner = None;
                r.head.clear();
                r.head_sent = 0;
                r.pieces.clear();
                r.piece = 0;
                r.offset = 0;
                r
            }
            None => Box::new(Response {
                owner: None,
                head: Vec::with_capacity(256),
                head_sent: 0,
                pieces: Vec::new(),
                piece: 0,
                offset: 0,
                keep_alive: true,
            }),
        }
    }

    fn start(&mut self, ctx: &mut Ctx, resp: Box<Response>) -> Next {
        // "HTTP/1.1 NNN": the status is in bytes 9..12 of every head.
        let status = resp
            .head
            .get(9..12)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        ctx.stats.response(status);
        if resp.owner.is_some() {
            let a = self.acct.get_or_insert_with(|| {
                let mut map = StreamMap::new();
                map.push_overhead(self.written);
                Box::new(Accounting {
                    map,
                    targets: Vec::new(),
                    acked: Vec::new(),
                    read_upto: 0,
                    start_window: 0,
                    start_acked: 0,
                    next_poll: ctx.now,
                })
            });
            let body: u64 = resp
                .pieces
                .iter()
                .map(|p| match p {
                    BodyPiece::File { start, end, .. } => end - start,
                    BodyPiece::Literal(b) => b.len() as u64,
                })
                .sum();
            // The client's window now, before a large body fills its buffer: the baseline for
            // how much acknowledged data it might not have read.
            a.start_window = 0;
            if body >= SENDFILE_MIN {
                if let Ok(AckState {
                    bytes_acked,
                    window: Some(w),
                    ..
                }) = tcp_acked(self.fd)
                {
                    a.start_window = u64::from(w);
                    a.start_acked = bytes_acked;
                }
            }
        }
        self.resp = Some(resp);
        self.state = State::Send;
        self.deadline = ctx.now + ctx.cfg.send_timeout;
        Next::Write
    }

    /// Describe the next send: `iov`/`msg` for bytes in memory (the head, literals, small file
    /// pieces from the mapping), or a `sendfile` range for large file pieces.
    pub fn prepare_send(&mut self, ctx: &mut Ctx) -> SendPlan {
        let send_path = ctx.cfg.send_path;
        self.shaper_wait = None;
        // How many body bytes the shaper lets this connection send now. Heads are never shaped.
        let mut body_budget = u64::MAX;
        self.granted = 0;
        if let (Some((key, _)), Some(resp)) = (&self.shaped, self.resp.as_deref()) {
            if let Some(BodyPiece::File { start, end, .. }) = resp.pieces.get(resp.piece) {
                let want = (end - start - resp.offset).min(MAX_SENDFILE_CHUNK);
                let head_done = resp.head_sent == resp.head.len();
                // Already found stalled: while the last grant is still unsent, back off without
                // asking the shaper (asking would take a turn in the user's ring, only to give
                // the chunk back).
                let checked =
                    self.unsent_waits > 0 && head_done && ctx.shaping.core.is_shaped(*key);
                if checked && unsent_bytes(self.fd).is_ok_and(|u| u > 0) {
                    return SendPlan::Wait(ctx.now + unsent_backoff(&mut self.unsent_waits));
                }
                let now = ctx.shaping.shaper.now();
                match ctx.shaping.core.request(*key, want, now) {
                    // The last grant has not left yet (the client does not read, or reads
                    // slowly): queue no more in kernel memory, and give the tokens back for
                    // another connection. Look again after a backoff (10 ms doubling to
                    // 2.56 s). Checked only when a grant came, and not twice.
                    Grant::Send(n)
                        if !checked
                            && ctx.shaping.core.is_shaped(*key)
                            && unsent_bytes(self.fd).is_ok_and(|u| u > 0) =>
                    {
                        ctx.shaping.core.give_back(*key, n);
                        let wait = unsent_backoff(&mut self.unsent_waits);
                        if head_done {
                            return SendPlan::Wait(ctx.now + wait);
                        }
                        body_budget = 0;
                    }
                    Grant::Send(n) => {
                        self.unsent_waits = 0;
                        body_budget = n;
                        self.granted = n;
                    }
                    Grant::Wait(at) if head_done => {
                        return SendPlan::Wait(ctx.shaping.deadline(ctx.now, at));
                    }
                    Grant::Wait(_) => body_budget = 0,
                }
            }
        }
        let Some(resp) = self.resp.as_deref() else {
            return SendPlan::Iov {
                len: 0,
                more: false,
            };
        };
        let piece = resp.pieces.get(resp.piece);
        let big_file = match piece {
            Some(BodyPiece::File { start, end, .. }) => {
                send_path == SendPath::Sendfile && end - start >= SENDFILE_MIN
            }
            _ => false,
        };
        let head_rest = &resp.head[resp.head_sent..];
        if big_file && head_rest.is_empty() {
            if let Some(BodyPiece::File {
                file, start, end, ..
            }) = piece
            {
                let from = start + resp.offset;
                // Shaped: no more than the grant (the head is sent, so a shaped connection
                // that got here holds one).
                return SendPlan::File {
                    fd: file.raw_fd(),
                    offset: from,
                    len: (end - from).min(MAX_SENDFILE_CHUNK).min(body_budget) as usize,
                };
            }
        }
        let mut n = 0;
        let mut total = 0usize;
        if !head_rest.is_empty() {
            self.iov[n] = libc::iovec {
                iov_base: head_rest.as_ptr() as *mut libc::c_void,
                iov_len: head_rest.len(),
            };
            total += head_rest.len();
            n += 1;
        }
        if !(big_file && n > 0) {
            if let Some(piece) = piece {
                let (ptr, len) = match piece {
                    BodyPiece::Literal(bytes) => {
                        let rest = &bytes[resp.offset as usize..];
                        (rest.as_ptr(), rest.len())
                    }
                    BodyPiece::File {
                        file, start, end, ..
                    } => {
                        let from = start + resp.offset;
                        file.kernel_ptr(from, (end - from).min(MAX_CHUNK).min(body_budget))
                    }
                };
                if len > 0 {
                    self.iov[n] = libc::iovec {
                        iov_base: ptr as *mut libc::c_void,
                        iov_len: len,
                    };
                    total += len;
                    n += 1;
                }
            }
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n;
        SendPlan::Iov {
            len: total,
            more: big_file,
        }
    }

    /// The send that held the shaper's grant is over and took `sent_body` body bytes: the
    /// granted bytes the kernel did not take (all of them when the send failed or would have
    /// blocked) go back to this connection's share, for its next send.
    pub fn refund_grant(&mut self, ctx: &mut Ctx, sent_body: u64) {
        if self.granted == 0 {
            return;
        }
        let unsent = self.granted.saturating_sub(sent_body);
        if let (Some((key, _)), true) = (&self.shaped, unsent > 0) {
            ctx.shaping.core.refund(*key, unsent);
        }
        self.granted = 0;
    }

    /// A send finished with `res`.
    pub fn on_sent(&mut self, ctx: &mut Ctx, res: io::Result<usize>) -> Next {
        // Whatever the outcome, the grant this send held is settled now: the body bytes the
        // kernel did not take (all of them when it failed or would have blocked) go back.
        let head_rest = self
            .resp
            .as_deref()
            .map_or(0, |r| r.head.len() - r.head_sent);
        let sent = *res.as_ref().unwrap_or(&0);
        self.refund_grant(ctx, sent.saturating_sub(head_rest) as u64);
        let n = match res {
            Ok(0) => {
                // Nothing went out although the socket took the send: a content file shrank
                // under sendfile (or the peer is gone).
                tracing::error!(
                    "a send made no progress (content file truncated?); closing the connection"
                );
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
                    tracing::error!(
                        "a content-store file shrank under a send (EFAULT); closing the connection"
                    );
                }
                return Next::Close;
            }
        };
        let Some(resp) = self.resp.as_deref_mut() else {
            return Next::Close;
        };
        if n > 0 {
            self.deadline = ctx.now + ctx.cfg.send_timeout;
        }
        self.written += n as u64;
        ctx.stats.add(&ctx.stats.bytes_sent, n as u64);
        let mut left = n;
        let h = left.min(head_rest);
        resp.head_sent += h;
        left -= h;
        if let Some(a) = self.acct.as_deref_mut() {
            a.map.push_overhead(h as u64);
        }
        while left > 0 {
            let Some(piece) = resp.pieces.get(resp.piece) else {
                break;
            };
            let plen = match piece {
                BodyPiece::Literal(b) => b.len() as u64,
                BodyPiece::File { start, end, .. } => end - start,
            };
            let take = (left as u64).min(plen - resp.offset);
            if let Some(a) = self.acct.as_deref_mut() {
                match (piece, &resp.owner) {
                    (BodyPiece::File { start, part, .. }, Some((user, item))) => {
                        let tag = a.tag(user, item, *part);
                        a.map.push_content(tag, start + resp.offset, take);
                    }
                    _ => a.map.push_overhead(take),
                }
            }
            resp.offset += take;
            left -= take as usize;
            if resp.offset == plen {
                resp.piece += 1;
                resp.offset = 0;
            }
        }
        if !resp.done() {
            return Next::Write;
        }
        self.finish_response(ctx)
    }

    fn finish_response(&mut self, ctx: &mut Ctx) -> Next {
        let keep_alive = self.resp.as_ref().is_some_and(|r| r.keep_alive) && !ctx.draining;
        if let Some(r) = &mut self.resp {
            // Drop file references now; keep the head buffer for the next response.
            r.pieces.clear();
            if r.head.capacity() > 4096 {
                r.head = Vec::new();
            }
        }
        if !keep_alive {
            if self.acct.as_ref().is_some_and(|a| a.map.in_flight() > 0) {
                // Close our side and wait (briefly) for the client's FIN: it proves the client
                // read the tail of the response, which is then credited.
                sys::shutdown_write(self.fd);
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
}

impl Conn {
    /// Credit content the client's TCP acknowledged (`tcpi_bytes_acked`, mapped back through the
    /// stream map). Delivered means acknowledged by the client's TCP, with one guard for the
    /// client that never reads (see below). `closing`: the connection is ending now.
    pub fn account(&mut self, ctx: &mut Ctx, proof: bool, closing: bool) {
        let Some(a) = self.acct.as_deref_mut() else {
            return;
        };
        if a.map.in_flight() == 0 {
            return;
        }
        let Ok(AckState {
            bytes_acked: acked,
            window,
            peer_ended,
        }) = tcp_acked(self.fd)
        else {
            return;
        };
        // Bytes within the first receive buffer of a large response (about two windows as
        // advertised when it started) may sit unread in the client's kernel. A poll does not
        // credit them until the client acknowledged more than that (it must be reading), proves
        // it read (`proof`: a clean FIN), or the connection ends with its window open or by the
        // client's own hand. A client that holds the connection with its window shut, having
        // acknowledged no more than that buffer, never read anything: when weir gives up on it
        // (send timeout, drain) it is credited nothing.
        //
        // A client that ends the connection itself is credited what its TCP acknowledged, as
        // delivery is defined. A download manager that re-splits a range drops the connection it
        // shortened once it read up to the new end, with a buffer of unread bytes behind: had it
        // read 40 KB or nothing, the server sees the same acknowledgments (the window does not
        // reopen by less than a segment), and nobody fetches those 40 KB again.
        let within_first_buffer =
            a.start_window > 0 && acked.saturating_sub(a.start_acked) <= 2 * a.start_window;
        let upto =
            if proof || !within_first_buffer || (closing && (peer_ended || window != Some(0))) {
                acked
            } else {
                a.start_acked.max(acked.min(a.read_upto))
            };
        a.acked.clear();
        a.map.acknowledge_into(upto, &mut a.acked);
        let credited: u64 = a.acked.iter().map(|(_, r)| r.end - r.start).sum();
        ctx.stats.add(&ctx.stats.bytes_credited, credited);
        for (tag, range) in a.acked.drain(..) {
            let (user, item, part) = &a.targets[tag as usize];
            ctx.credits.push(Credit {
                user: user.clone(),
                item: item.clone(),
                part: *part,
                range,
            });
        }
        if a.map.in_flight() == 0 && self.resp.is_none() {
            // Idle and everything sent was credited: keep no accounting state (the next
            // response starts a new map at the current stream offset).
            self.acct = None;
        }
    }

    /// Shape this connection as `user`, or as a signed link's rate class (a keep-alive
    /// connection may change either).
    fn bind_shaper(&mut self, ctx: &mut Ctx, user: &Arc<str>, class: Option<ShapeClass>) {
        let name = class.as_ref().map_or(user, |(n, _)| n);
        if matches!(&self.shaped, Some((_, u)) if u == name) {
            return;
        }
        if let Some((key, _)) = self.shaped.take() {
            ctx.shaping.core.close(key);
        }
        let handle = match (&class, ctx.shaping.users.get(name)) {
            (Some((n, rate)), _) => ctx.shaping.user(n, Some(*rate)),
            (None, Some(h)) => h.clone(),
            (None, None) => ctx.shaping.user(user, None),
        };
        let name = name.clone();
        // Tagged with the token: the shaper names it in `ready` when its chunk fills.
        let key = ctx.shaping.core.open_tagged(&handle, self.token);
        let stats = ctx.shaping.shaper.user_stats(&name);
        let rate = stats
            .as_ref()
            .map_or(ctx.shaping.default_rate, |s| s.limits.rate);
        self.shaped = Some((key, name));
        // A shaped connection needs little send buffer: size it to this connection's share of
        // the user's rate (the user's connections so far, this one included), so that stalled
        // shaped downloads do not pin kernel memory.
        // Unlimited users keep the kernel's autotuning, and cost no syscall here.
        if let Rate::BytesPerSec(b) = rate {
            let conns = stats.map_or(1, |s| s.active_connections.max(1));
            let share = Rate::BytesPerSec(b / u64::from(conns));
            let rtt = crate::completion::tcp_rtt(self.fd).unwrap_or_default();
            if let Some(bytes) = ctx.shaping.shaper.config().sndbuf_for(share, rtt) {
                let _ = sys::set_sndbuf(self.fd, bytes as usize);
            }
        }
    }

    /// The connection is going away: credit what was delivered, release its shaper slot.
    pub fn on_close(&mut self, ctx: &mut Ctx) {
        self.account(ctx, false, true);
        if let Some((key, _)) = self.shaped.take() {
            ctx.shaping.core.close(key);
        }
    }

    /// The sweep's periodic credit. While a response is still being sent, at most once per
    /// [`SENDING_POLL_EVERY`]: the ledger journals progress once a second anyway, and 8,000 slow
    /// shaped downloads polled every sweep cost 32,000 `getsockopt` calls a second. Once the
    /// response is all written, every sweep, so the last bytes complete the item promptly. Not
    /// at all while the poll could credit nothing.
    pub fn sweep_account(&mut self, ctx: &mut Ctx) {
        let sending = self.resp.is_some();
        let Some(a) = self.acct.as_deref_mut() else {
            return;
        };
        if a.map.in_flight() == 0 {
            return;
        }
        if !a.poll_can_credit() {
            return;
        }
        if sending {
            if ctx.now < a.next_poll {
                return;
            }
            a.next_poll = ctx.now + SENDING_POLL_EVERY;
        }
        self.account(ctx, false, false);
    }
}

/// The next wait of a shaped connection whose last grant is still unsent (`waits` times in a
/// row so far): 10 ms, doubling to 2.56 s.
fn unsent_backoff(waits: &mut u8) -> std::time::Duration {
    let wait = std::time::Duration::from_millis(10 << (*waits).min(8));
    *waits = waits.saturating_add(1);
    wait
}

/// How often the sweep credits a response that is still being sent.
pub const SENDING_POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a closing connection waits for the client's FIN after the last response.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// What a request is served from: one file part, or an album's zip.
enum Repr<'a> {
    Part(&'a Part, u32),
    Zip(&'a Resource, &'a ZipRep),
}

impl Repr<'_> {
    fn len(&self) -> u64 {
        match self {
            Repr::Part(p, _) => p.file.len(),
            Repr::Zip(_, z) => z.layout.len(),
        }
    }

    fn validators(&self) -> Validators<'_> {
        match self {
            Repr::Part(p, _) => Validators {
                etag: &p.etag,
                last_modified: p.last_modified,
            },
            Repr::Zip(_, z) => Validators {
                etag: &z.etag,
                last_modified: z.last_modified,
            },
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Repr::Part(..) => "application/octet-stream",
            Repr::Zip(..) => "application/zip",
        }
    }

    /// Append the body pieces for `range` of this representation.
    fn emit(&self, range: std::ops::Range<u64>, out: &mut Vec<BodyPiece>) {
        if range.is_empty() {
            return;
        }
        match self {
            Repr::Part(p, part) => out.push(BodyPiece::File {
                file: p.file.clone(),
                start: range.start,
                end: range.end,
                part: *part,
            }),
            Repr::Zip(res, z) => {
                for slice in z.layout.slice(range) {
                    out.push(match slice {
                        ZipSlice::Literal(bytes) => BodyPiece::Literal(bytes.to_vec()),
                        ZipSlice::Data { track, range } => BodyPiece::File {
                            file: res.parts[track].file.clone(),
                            start: range.start,
                            end: range.end,
                            part: track as u32,
                        },
                    });
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_representation_head(
    ctx: &mut Ctx,
    resp: &mut Response,
    status: u16,
    content_length: u64,
    content_type: &str,
    keep_alive: bool,
    v: &Validators<'_>,
    content_range: Option<ContentRange>,
) {
    http::write_head(
        &mut resp.head,
        &ResponseHead {
            status,
            content_length,
            content_type,
            keep_alive,
            etag: Some(v.etag),
            last_modified: Some(v.last_modified),
            content_range,
            accept_ranges: true,
            extra: &[],
        },
        ctx.date.now(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accounting for a response that wrote `written` stream bytes (a 300-byte head, then
    /// content) after a client window of `window` at `start_acked`, with `acked` credited.
    fn acct(window: u64, start_acked: u64, read_upto: u64, written: u64, acked: u64) -> Accounting {
        let mut map = StreamMap::new();
        map.push_overhead(300);
        map.push_content(0, 0, written - 300);
        map.acknowledge(acked);
        Accounting {
            map,
            targets: Vec::new(),
            acked: Vec::new(),
            read_upto,
            start_window: window,
            start_acked,
            next_poll: Instant::now(),
        }
    }

    #[test]
    fn no_poll_while_it_could_credit_nothing() {
        let w = 64 * 1024;
        // Inside the first buffer, the start already credited: nothing to learn.
        assert!(!acct(w, 300, 0, 100_000, 300).poll_can_credit());
        assert!(!acct(w, 300, 0, 300 + 2 * w - 1, 300).poll_can_credit());
        // Written past two windows: the client may have read, so poll.
        assert!(acct(w, 300, 0, 300 + 2 * w, 300).poll_can_credit());
        // Not yet credited up to where the response started, or to what the client provably
        // read: poll.
        assert!(acct(w, 300, 0, 100_000, 0).poll_can_credit());
        assert!(acct(w, 300, 50_000, 100_000, 300).poll_can_credit());
        assert!(!acct(w, 300, 50_000, 100_000, 50_000).poll_can_credit());
        // No window known at the start: every poll may credit.
        assert!(acct(0, 300, 0, 100_000, 300).poll_can_credit());
    }
}
