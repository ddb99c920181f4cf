//! What a worker thread owns, whichever driver runs it: its context (caches, limits, date), its
//! connections (a slab addressed by generation-checked tokens) and its inbox.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use weir_shaper::{CoreShaper, Nanos, Rate, Shaper, UserHandle, UserLimits};

use crate::config::ServeConfig;
use crate::http::{DateCache, Limits};

use super::auth::{AuthCache, AuthPool, Reply};
use super::conn::{Conn, Next};
use super::resources::Resource;
use super::stats::WorkerStats;
use super::sys;

pub use crate::completion::Credit;

/// Where a worker sends its credits (once per event-loop iteration, never per chunk).
pub type CreditSink = Arc<dyn Fn(Vec<Credit>) + Send + Sync>;

/// Per-worker context the connection state machine reads and updates.
pub struct Ctx {
    pub id: usize,
    pub cfg: Arc<ServeConfig>,
    pub limits: Limits,
    pub date: DateCache,
    pub secret: Arc<Vec<u8>>,
    pub cache: AuthCache,
    pub pool: AuthPool,
    /// Time of the current loop iteration (one clock read per batch of events).
    pub now: Instant,
    pub draining: bool,
    /// Receive buffer shared by all connections of this worker.
    pub scratch: Box<[u8]>,
    /// Acknowledged content not yet handed to the ledger.
    pub credits: Vec<Credit>,
    pub credit_sink: Option<CreditSink>,
    pub stats: Arc<WorkerStats>,
    pub shaping: Shaping,
}

/// This worker's side of the bandwidth shaper.
pub struct Shaping {
    pub shaper: Arc<Shaper>,
    pub core: CoreShaper,
    /// Users seen on this worker: handle and the rate it was created with.
    pub users: HashMap<Arc<str>, UserHandle>,
    pub default_rate: Rate,
}

impl Shaping {
    /// The handle of `user` at `rate` (`None`: the default), updating its limits if they changed.
    pub fn user(&mut self, user: &Arc<str>, rate: Option<Rate>) -> UserHandle {
        let limits = UserLimits::new(rate.unwrap_or(self.default_rate));
        match self.users.get(user) {
            Some(h) => {
                if self
                    .shaper
                    .user_stats(user)
                    .is_some_and(|s| s.limits != limits)
                {
                    self.shaper.set_user_limits(user, limits);
                }
                h.clone()
            }
            None => {
                let h = self.shaper.user(user, limits);
                self.shaper.set_user_limits(user, limits);
                self.users.insert(user.clone(), h.clone());
                h
            }
        }
    }

    /// The shaper's clock now, and a helper to turn its deadlines into `Instant`s.
    pub fn deadline(&self, now: Instant, at: Nanos) -> Instant {
        let dt = at.0.saturating_sub(self.shaper.now().0);
        now + Duration::from_nanos(dt)
    }
}

/// Merge a batch's overlapping or adjacent ranges of the same (user, item, part): a hot small
/// item served many times per loop iteration reaches the ledger as one credit.
fn coalesce(credits: &mut Vec<Credit>) {
    if credits.len() < 2 {
        return;
    }
    credits.sort_unstable_by(|a, b| {
        (&*a.user, &*a.item, a.part, a.range.start).cmp(&(
            &*b.user,
            &*b.item,
            b.part,
            b.range.start,
        ))
    });
    credits.dedup_by(|next, kept| {
        let same = kept.part == next.part && kept.user == next.user && kept.item == next.item;
        if same && next.range.start <= kept.range.end {
            kept.range.end = kept.range.end.max(next.range.end);
            true
        } else {
            false
        }
    });
}

impl Ctx {
    /// Hand the batch of credits gathered in this loop iteration to the ledger.
    pub fn flush_credits(&mut self) {
        if self.credits.is_empty() {
            return;
        }
        coalesce(&mut self.credits);
        let batch = std::mem::take(&mut self.credits);
        if let Some(sink) = &self.credit_sink {
            sink(batch);
        }
    }
}

/// Everything a worker thread starts with.
pub struct WorkerInit {
    pub id: usize,
    pub cfg: Arc<ServeConfig>,
    pub listener: OwnedFd,
    pub wake: Arc<OwnedFd>,
    pub inbox: Receiver<Reply>,
    pub secret: Arc<Vec<u8>>,
    pub resources: HashMap<String, Arc<Resource>>,
    pub pool: AuthPool,
    pub draining: Arc<AtomicBool>,
    pub credit_sink: Option<CreditSink>,
    pub stats: Arc<WorkerStats>,
    pub shaper: Arc<Shaper>,
    pub default_rate: Rate,
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
    /// Connections waiting for the shaper, by the time they may send again (entries whose
    /// connection was woken earlier are stale and skipped).
    pub timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// When the shaper's background work for waiting connections is due (`CoreShaper::poll`).
    pub shaper_poll_at: Option<Instant>,
}

/// How often deadlines are checked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long accepting pauses after the process ran out of descriptors.
pub const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

impl Worker {
    pub fn new(init: WorkerInit) -> Worker {
        let now = Instant::now();
        let limits = Limits::default();
        let cache = AuthCache::new(init.resources, init.cfg.credential_cache_ttl);
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
                credits: Vec::new(),
                credit_sink: init.credit_sink,
                stats: init.stats.clone(),
                shaping: Shaping {
                    core: CoreShaper::new(init.shaper.clone()),
                    shaper: init.shaper,
                    users: HashMap::new(),
                    default_rate: init.default_rate,
                },
            },
            conns: Slab::with_stats(init.stats),
            listener: Some(init.listener),
            wake: init.wake,
            inbox: init.inbox,
            draining_flag: init.draining,
            drain_deadline: None,
            accept_paused_until: None,
            next_sweep: now + SWEEP_EVERY,
            ready: Vec::new(),
            timers: BinaryHeap::new(),
            shaper_poll_at: None,
        }
    }

    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Whether the server-wide drain flag was raised and this worker has not reacted yet.
    pub fn drain_requested(&self) -> bool {
        !self.ctx.draining && self.draining_flag.load(Ordering::Acquire)
    }

    /// Enter draining: returns the tokens of connections to close now (idle ones).
    pub fn begin_drain(&mut self) -> Vec<u64> {
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

    /// Tokens of connections whose deadline passed (or all of them past the drain deadline).
    /// Also credits what long responses delivered since the last sweep.
    pub fn expired(&mut self) -> Vec<u64> {
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

    /// Answer a fresh socket over the connection cap with 503 and close it.
    pub fn refuse_over_cap(&self, fd: i32) {
        self.ctx.stats.add(&self.ctx.stats.refused_over_cap, 1);
        const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: weir\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        sys::send_small(fd, BUSY);
        sys::close(fd);
    }

    pub fn at_capacity(&self) -> bool {
        self.conns.len() >= self.ctx.cfg.max_connections_per_worker
    }

    /// Connections parked by the shaper that may send now: their wait is over, or the shaper
    /// filled their chunk early (its `ready` list, after its `poll` if that is due). Each comes
    /// once, unparked, for the driver to drive with `Next::Write`.
    pub fn shaper_wakeups(&mut self) -> Vec<u64> {
        let now = self.ctx.now;
        let mut due = Vec::new();
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(c) = self.conns.get_mut(token) {
                if c.shaper_wait == Some(at) {
                    c.shaper_wait = None;
                    due.push(token);
                }
            }
        }
        if self.shaper_poll_at.is_none_or(|t| now >= t) {
            self.poll_shaper();
        }
        for token in self.ctx.shaping.core.ready() {
            if let Some(c) = self.conns.get_mut(token) {
                if c.shaper_wait.take().is_some() {
                    due.push(token);
                }
            }
        }
        due
    }

    /// After connections were driven: if the shaper's poll is not scheduled, schedule it
    /// (some may have just started waiting).
    pub fn arm_shaper_poll(&mut self) {
        if self.shaper_poll_at.is_none() {
            self.poll_shaper();
        }
    }

    /// Run the core shaper's poll and note when it wants the next one. A worker with no
    /// connection waiting on the shaper does not even read the shaper's clock.
    fn poll_shaper(&mut self) {
        let shaping = &mut self.ctx.shaping;
        self.shaper_poll_at = if shaping.core.has_waiting() {
            let at = shaping.core.poll(shaping.shaper.now());
            at.map(|at| shaping.deadline(self.ctx.now, at))
        } else {
            None
        };
    }

    /// When the next shaping wait ends or the shaper's poll is due.
    pub fn next_timer(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((at, _))| *at);
        match (t, self.shaper_poll_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The worker may exit: draining and nothing left.
    pub fn finished(&self) -> bool {
        self.ctx.draining && self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(user: &str, item: &str, part: u32, r: std::ops::Range<u64>) -> Credit {
        Credit {
            user: Arc::from(user),
            item: Arc::from(item),
            part,
            range: r,
        }
    }

    #[test]
    fn coalesce_merges_same_target_only() {
        let mut v = vec![
            c("a", "x", 0, 0..4096),
            c("a", "x", 0, 0..4096),
            c("b", "x", 0, 0..10),
            c("a", "x", 0, 4096..5000),
            c("a", "x", 1, 0..10),
            c("a", "x", 0, 6000..7000),
        ];
        coalesce(&mut v);
        assert_eq!(
            v,
            vec![
                c("a", "x", 0, 0..5000),
                c("a", "x", 0, 6000..7000),
                c("a", "x", 1, 0..10),
                c("b", "x", 0, 0..10),
            ]
        );
    }
}
