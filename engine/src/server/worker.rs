//! What a worker thread owns and does, whichever driver runs it: its context, its connections
//! (a slab addressed by generation-checked tokens), its listener and inbox, and every decision
//! the two drivers share: admitting a connection (the connection cap and its 503), the accept
//! back-off after EMFILE/ENFILE, the send budget, wake-ups (auth replies, drain, shaper
//! wake-ups), the expiry sweep and closing. A driver ([`uring`](super::uring),
//! [`epoll`](super::epoll)) only submits what a connection asked for ([`Submit`]) and feeds
//! completions back.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use weir_shaper::Shaper;

use crate::config::ServeConfig;
use crate::http::{DateCache, Limits};

use super::auth::{AuthCache, AuthPool, Reply};
use super::conn::{Conn, Next};
use super::credit::{CreditBatch, CreditSink};
use super::ctx::Ctx;
use super::resources::Resource;
use super::shaping::{ShaperWaits, Shaping};
use super::socket::FdSocket;
use super::stats::WorkerStats;
use super::sys;
use super::tls::{Certificates, TlsSession};
use crate::completion::InflightFile;

/// Everything a worker thread starts with.
pub struct WorkerInit {
    pub id: usize,
    pub cfg: Arc<ServeConfig>,
    /// The plain-HTTP listener (`None`: `--listen off`).
    pub listener: Option<OwnedFd>,
    /// The HTTPS listener and the certificates its handshakes use.
    pub tls_listener: Option<OwnedFd>,
    pub certs: Option<Arc<Certificates>>,
    pub wake: Arc<OwnedFd>,
    pub inbox: Receiver<Reply>,
    pub secret: Arc<Vec<u8>>,
    pub resources: HashMap<String, Arc<Resource>>,
    pub pool: AuthPool,
    pub draining: Arc<AtomicBool>,
    pub credit_sink: Option<CreditSink>,
    /// The ledger's journal watermark, for this worker's map file of live credits.
    pub credit_watermark: Option<crate::completion::inflight::Watermark>,
    pub stats: Arc<WorkerStats>,
    pub shaper: Arc<Shaper>,
    /// The default user rate and the rate classes (changed by SIGHUP).
    pub rates: Arc<super::shaping::LiveRates>,
    /// The access log, when one is configured.
    pub access_log: Option<crate::accesslog::AccessLog>,
}

/// A worker's connections: `token = generation << 32 | index`.
pub struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
    /// Counts accepted and closed connections for `/metrics`.
    stats: Arc<WorkerStats>,
}

struct Slot {
    gen: u32,
    conn: Option<Box<Conn>>,
}

/// Tokens use 56 bits so io_uring user data has 8 bits left for the operation kind.
const GEN_MASK: u32 = 0x00FF_FFFF;

impl Default for Slab {
    fn default() -> Self {
        Self::new()
    }
}

impl Slab {
    pub fn new() -> Slab {
        Self::with_stats(Arc::default())
    }

    pub fn with_stats(stats: Arc<WorkerStats>) -> Slab {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            stats,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserve a slot and build the connection with its token.
    pub fn insert(&mut self, make: impl FnOnce(u64) -> Box<Conn>) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = (slot.gen + 1) & GEN_MASK;
        let token = (u64::from(slot.gen) << 32) | u64::from(idx);
        slot.conn = Some(make(token));
        self.len += 1;
        self.stats.add(&self.stats.accepted, 1);
        token
    }

    pub fn get_mut(&mut self, token: u64) -> Option<&mut Conn> {
        let idx = (token & 0xFFFF_FFFF) as usize;
        let gen = ((token >> 32) as u32) & GEN_MASK;
        match self.slots.get_mut(idx) {
            Some(Slot {
                gen: g,
                conn: Some(c),
            }) if *g == gen => Some(c),
            _ => None,
        }
    }

    pub fn remove(&mut self, token: u64) -> Option<Box<Conn>> {
        let idx = (token & 0xFFFF_FFFF) as usize;
        let gen = ((token >> 32) as u32) & GEN_MASK;
        let slot = self.slots.get_mut(idx)?;
        if slot.gen != gen {
            return None;
        }
        let conn = slot.conn.take()?;
        self.free.push(idx as u32);
        self.len -= 1;
        self.stats.add(&self.stats.closed, 1);
        Some(conn)
    }

    /// Tokens of every live connection.
    pub fn tokens(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| (u64::from(s.gen) << 32) | i as u64)
            .collect()
    }
}

/// Driver-independent worker state.
pub struct Worker {
    pub ctx: Ctx,
    pub conns: Slab,
    pub listener: Option<OwnedFd>,
    pub tls_listener: Option<OwnedFd>,
    pub certs: Option<Arc<Certificates>>,
    pub wake: Arc<OwnedFd>,
    pub inbox: Receiver<Reply>,
    pub draining_flag: Arc<AtomicBool>,
    /// Set when draining began: past it, in-flight downloads are cut.
    pub drain_deadline: Option<Instant>,
    /// Accept paused after EMFILE/ENFILE until then.
    pub accept_paused_until: Option<Instant>,
    pub next_sweep: Instant,
    /// epoll: connections that used their send turn and continue after this round.
    pub ready: Vec<u64>,
    /// Connections waiting for the shaper.
    pub shaper_waits: ShaperWaits,
    /// When live downloads are next published for the admin listener (none: no admin).
    pub next_publish: Option<Instant>,
}

/// How often deadlines are checked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long accepting pauses after the process ran out of descriptors.
pub const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// How often live downloads are published for the admin listener.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Sends one connection may make in a row before it yields to the others.
pub const SEND_BUDGET: u32 = 8;

/// What the drivers do differently: how they carry out a connection's request.
pub trait Submit {
    /// Carry out what connection `token` asked for until it has to wait (or used its send
    /// turn), closing it through [`Worker::close`] when it asks to.
    fn drive(&mut self, w: &mut Worker, token: u64, next: Next);
    /// Stop accepting (draining): no new connection completes on the listener after this.
    fn stop_accepting(&mut self, w: &mut Worker);
    /// Accept again after an [`EMFILE_BACKOFF`] pause.
    fn resume_accepting(&mut self, w: &mut Worker);
}

impl Worker {
    pub fn new(init: WorkerInit) -> Worker {
        let now = Instant::now();
        let limits = Limits::default();
        let cache = AuthCache::new(init.resources, init.cfg.credential_cache_ttl);
        // Credits that survive SIGKILL: this worker's map file (only with accounting).
        let inflight = init.credit_watermark.clone().and_then(|durable| {
            let slots = crate::completion::inflight::DEFAULT_SLOTS;
            match InflightFile::create(&init.cfg.data_dir, init.id, slots, durable) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    tracing::warn!(worker = init.id, error = %e, "no map file for credits (they are then durable only once journaled, about once a second)");
                    None
                }
            }
        });
        let next_publish = init.cfg.admin_listen.map(|_| now);
        Worker {
            ctx: Ctx {
                id: init.id,
                cfg: init.cfg,
                limits,
                date: DateCache::new(),
                secret: init.secret,
                cache,
                pool: init.pool,
                now,
                draining: false,
                scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
                credits: CreditBatch::new(init.credit_sink).with_inflight(inflight),
                stats: init.stats.clone(),
                shaping: Shaping::new(init.shaper, init.rates),
                access: init.access_log,
            },
            conns: Slab::with_stats(init.stats),
            listener: init.listener,
            tls_listener: init.tls_listener,
            certs: init.certs,
            wake: init.wake,
            inbox: init.inbox,
            draining_flag: init.draining,
            drain_deadline: None,
            accept_paused_until: None,
            next_sweep: now + SWEEP_EVERY,
            ready: Vec::new(),
            shaper_waits: ShaperWaits::default(),
            next_publish,
        }
    }

    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    pub fn listen_fd(&self) -> Option<i32> {
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// The HTTPS listener, if any.
    pub fn tls_listen_fd(&self) -> Option<i32> {
        self.tls_listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// The listener of one kind (`tls`: the HTTPS one).
    pub fn listener_fd(&self, tls: bool) -> Option<i32> {
        if tls {
            self.tls_listen_fd()
        } else {
            self.listen_fd()
        }
    }

    /// A new socket from the listener (`tls`: the HTTPS one): refused (503) over the
    /// connection cap or while draining (closed), else a new connection whose token is
    /// returned, for the driver to register and drive with `Next::Read` (most clients send the
    /// request, or the ClientHello, right away).
    pub fn admit(&mut self, fd: OwnedFd, tls: bool) -> Option<u64> {
        if self.ctx.draining {
            return None;
        }
        let session = match (tls, &self.certs) {
            (false, _) => None,
            (true, Some(certs)) => Some(TlsSession::new(certs.config())?),
            (true, None) => return None,
        };
        if self.conns.len() >= self.ctx.cfg.max_connections_per_worker {
            if session.is_some() {
                // No plaintext 503 into a TLS handshake: just close.
                self.ctx.stats.add(&self.ctx.stats.refused_over_cap, 1);
                return None;
            }
            self.ctx.stats.add(&self.ctx.stats.refused_over_cap, 1);
            const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: weir\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            sys::send_small(fd.as_fd(), BUSY);
            return None;
        }
        let now = self.ctx.now;
        let ctx = &self.ctx;
        Some(self.conns.insert(|t| {
            let c = Conn::new(FdSocket::new(fd), t, now, ctx);
            match session {
                Some(s) => c.with_tls(s),
                None => c,
            }
        }))
    }

    /// An accept failed with `errno`. Out of descriptors or memory: count it and pause accepts
    /// for [`EMFILE_BACKOFF`] (returns true: the driver stops watching the listener; the sweep
    /// resumes it). Anything else concerns one connection: go on.
    pub fn accept_failed(&mut self, errno: i32) -> bool {
        if !matches!(
            errno,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            return false;
        }
        let e = io::Error::from_raw_os_error(errno);
        tracing::warn!(error = %e, "accept: out of descriptors; pausing accepts");
        self.ctx.stats.add(&self.ctx.stats.accept_backoffs, 1);
        self.accept_paused_until = Some(self.ctx.now + EMFILE_BACKOFF);
        self.next_sweep = self.next_sweep.min(self.ctx.now + EMFILE_BACKOFF);
        true
    }

    /// The wake eventfd fired: answer parked requests from the auth pool's replies, and start
    /// draining if asked. A connection already closing (waiting for its in-flight operations)
    /// is not driven again: its reply is dropped.
    pub fn on_wake(&mut self, d: &mut impl Submit) {
        while let Ok(reply) = self.inbox.try_recv() {
            let token = reply.conn;
            if let Some(c) = self.conns.get_mut(token) {
                if c.closing {
                    continue;
                }
                let next = c.on_auth(&mut self.ctx, reply);
                d.drive(self, token, next);
            }
        }
        for user in self.ctx.stats.take_cuts() {
            self.cut_user(d, &user);
        }
        if self.drain_requested() {
            d.stop_accepting(self);
            self.listener = None;
            self.tls_listener = None;
            for t in self.begin_drain() {
                d.drive(self, t, Next::Close);
            }
        }
    }

    /// The admin API asked to cut `user`'s connections: close them now.
    fn cut_user(&mut self, d: &mut impl Submit, user: &str) {
        let mut cut = Vec::new();
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                if !c.closing && c.log.user.as_deref() == Some(user) {
                    cut.push(t);
                }
            }
        }
        tracing::info!(
            worker = self.ctx.id,
            user,
            connections = cut.len(),
            "cutting a user's connections (admin API)"
        );
        for t in cut {
            d.drive(self, t, Next::Close);
        }
    }

    /// Publish this worker's live downloads for `GET /downloads`, about once a second.
    fn publish_downloads(&mut self) {
        let now = self.ctx.now;
        match self.next_publish {
            Some(at) if now >= at => self.next_publish = Some(now + PUBLISH_EVERY),
            _ => return,
        }
        let mut live = Vec::new();
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                if let Some(l) = c.live_download(now) {
                    live.push(l);
                }
            }
        }
        self.ctx.stats.publish(live);
    }

    /// Whether the server-wide drain flag was raised and this worker has not reacted yet.
    fn drain_requested(&self) -> bool {
        !self.ctx.draining && self.draining_flag.load(Ordering::Acquire)
    }

    /// Enter draining: returns the tokens of connections to close now (idle ones).
    fn begin_drain(&mut self) -> Vec<u64> {
        self.ctx.draining = true;
        self.drain_deadline = Some(self.ctx.now + self.ctx.cfg.drain_timeout);
        tracing::info!(
            worker = self.ctx.id,
            connections = self.conns.len(),
            "draining: no new connections"
        );
        let mut close = Vec::new();
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                if c.on_drain() == Some(Next::Close) {
                    close.push(t);
                }
            }
        }
        close
    }

    /// When the sweep is due: close connections whose deadline passed (all of them past the
    /// drain deadline), credit what long responses delivered, and resume accepting after an
    /// EMFILE pause.
    pub fn sweep(&mut self, d: &mut impl Submit) {
        if self.ctx.now < self.next_sweep {
            return;
        }
        self.next_sweep = self.ctx.now + SWEEP_EVERY;
        self.publish_downloads();
        for t in self.expired() {
            d.drive(self, t, Next::Close);
        }
        if self.accept_paused_until.is_some_and(|t| self.ctx.now >= t) && !self.ctx.draining {
            self.accept_paused_until = None;
            d.resume_accepting(self);
        }
    }

    /// Tokens of connections whose deadline passed (or all of them past the drain deadline).
    /// Also credits what long responses delivered since the last sweep.
    fn expired(&mut self) -> Vec<u64> {
        let now = self.ctx.now;
        let cut_all = self.drain_deadline.is_some_and(|d| now >= d);
        let mut out = Vec::new();
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                if c.closing {
                    continue;
                }
                c.sweep_account(&mut self.ctx);
                if cut_all || c.on_deadline(now) == Some(Next::Close) {
                    out.push(t);
                }
            }
        }
        if !cut_all {
            self.ctx
                .stats
                .add(&self.ctx.stats.timeouts, out.len() as u64);
        }
        if cut_all && !out.is_empty() {
            tracing::warn!(
                worker = self.ctx.id,
                cut = out.len(),
                "drain deadline passed: cutting in-flight downloads"
            );
        }
        out
    }

    /// Park connection `token` until the shaper has bytes for it (at `at` at the latest).
    pub fn park_shaped(&mut self, token: u64, at: Instant) {
        if let Some(c) = self.conns.get_mut(token) {
            c.shaping.wait = Some(at);
            self.shaper_waits.park(token, at);
        }
    }

    /// Drive the connections parked by the shaper that may send now (their wait is over, or
    /// the shaper filled their chunk early). Closing ones are skipped.
    pub fn wake_shaped(&mut self, d: &mut impl Submit) {
        let conns = &mut self.conns;
        let due =
            self.shaper_waits
                .due(
                    &mut self.ctx.shaping,
                    self.ctx.now,
                    |token, at| match conns.get_mut(token) {
                        Some(c) if at.is_none() || c.shaping.wait == at => {
                            c.shaping.wait.take().is_some()
                        }
                        _ => false,
                    },
                );
        for token in due {
            if self
                .conns
                .get_mut(token)
                .is_some_and(|c| c.want == Next::Write && !c.closing)
            {
                d.drive(self, token, Next::Write);
            }
        }
    }

    /// After connections were driven: schedule the shaper's poll if it is not (some may have
    /// just started waiting).
    pub fn arm_shaper_poll(&mut self) {
        self.shaper_waits
            .arm_poll(&mut self.ctx.shaping, self.ctx.now);
    }

    /// When the next shaping wait ends or the shaper's poll is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.shaper_waits.next()
    }

    /// Connection `token` asked to close: credit what it delivered, release its shaper slot,
    /// and free it (closing its socket) once no operation of the driver's is in flight on it;
    /// until then it is marked closing and shut down, so those operations complete.
    pub fn close(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closing {
            return;
        }
        c.on_close(&mut self.ctx);
        if c.in_flight == 0 {
            self.conns.remove(token);
        } else {
            c.closing = true;
            sys::shutdown(c.sock.as_fd());
        }
    }

    /// End of a loop iteration: hand the credits gathered to the ledger. True when the worker
    /// may exit (draining and no connection left).
    pub fn end_iteration(&mut self) -> bool {
        self.ctx.credits.flush();
        let busy = self.ctx.now.elapsed();
        self.ctx.stats.loop_latency.observe(busy);
        self.ctx.draining && self.conns.is_empty()
    }
}
