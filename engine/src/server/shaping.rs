//! Shaping on the I/O side: how a connection asks the per-user shaper for body bytes, waits when
//! it has none, and is woken.
//!
//! The shaper itself (`weir_shaper`) knows nothing of sockets. This module is its only user in
//! the server:
//! - [`Shaping`]: a worker's handle on the shared shaper, its core shaper and its users;
//! - [`ConnShaping`]: one connection's key, the grant its send in flight holds (refunded when
//!   the kernel took less) and the backoff of a connection whose last grant is still unsent;
//! - [`ShaperWaits`]: connections parked until the shaper has bytes for them, by deadline, and
//!   the wake-ups the drivers act on (a deadline passed, or the shaper filled a chunk early).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_shaper::{
    ConnKey, CoreShaper, Grant, Nanos, Rate, Shaper, ShaperConfig, UserHandle, UserLimits,
};

use crate::config::ServeConfig;

use super::socket::ConnSocket;

/// The server's shaper, shared by every worker: `--global-rate`, `--min-grant`, and the
/// refill period and slack the benchmarks chose.
pub fn server_shaper(cfg: &ServeConfig) -> Arc<Shaper> {
    Shaper::new(ShaperConfig {
        global: cfg.global_rate,
        // A connection's timer can fire a few milliseconds late on a busy worker: buckets keep
        // at least 50 ms of credit (and at least a period) so that lateness delays bytes
        // instead of losing them.
        late_slack: Duration::from_millis(50),
        // Each grant is one send and one TCP segment: the more a send carries, the less CPU
        // per byte (16 KiB took a quarter of the crate's 4 KiB's sends, results/2026-11-23-
        // shaping; 32 KiB, the default, cut CPU per GiB by another fifth, results/2026-11-23-
        // shaping-grant). SO_SNDBUF stays at one chunk.
        min_grant_bytes: cfg.min_grant,
        // The allocator passes over every active user once per period, on whichever core gets
        // there first, and each worker passes over its users' waiting connections: at 10 ms
        // those passes were about a sixth of a shaped server's CPU samples with 200 users. 25 ms
        // cut CPU per GiB by 16% / 9% (io_uring / epoll, results/2026-11-23-shaping-period),
        // 100 ms by another 12% / 15% (results/2026-11-23-shaping-grant), with the per-user
        // ratio still within 2.5% over 20 s at 128 KiB/s. A rate change, an idle user's share
        // and late timers still settle within a period or two, well inside a second. A new
        // download's first body bytes wait for the next allocation, up to a period.
        refill_period: Duration::from_millis(100),
        ..Default::default()
    })
}

/// The rates a SIGHUP may change while the server runs, shared by every worker: the default
/// user rate and the rate classes. New requests read them; a user's open downloads follow a new
/// default at that user's next request.
#[derive(Debug)]
pub struct LiveRates {
    default_rate: std::sync::RwLock<Rate>,
    classes: std::sync::RwLock<Arc<HashMap<String, Rate>>>,
}

impl LiveRates {
    pub fn new(default_rate: Rate, classes: HashMap<String, Rate>) -> Arc<LiveRates> {
        Arc::new(LiveRates {
            default_rate: std::sync::RwLock::new(default_rate),
            classes: std::sync::RwLock::new(Arc::new(classes)),
        })
    }

    pub fn default_rate(&self) -> Rate {
        *self.default_rate.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn classes(&self) -> Arc<HashMap<String, Rate>> {
        self.classes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGHUP: the file's new default rate and rate classes.
    pub fn set(&self, default_rate: Rate, classes: HashMap<String, Rate>) {
        *self.default_rate.write().unwrap_or_else(|e| e.into_inner()) = default_rate;
        *self.classes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(classes);
    }
}

/// A signed link's rate class: shaped as its own class `user/NAME` at the class's rate.
pub type ShapeClass = (Arc<str>, Rate);

/// This worker's side of the bandwidth shaper.
pub struct Shaping {
    pub shaper: Arc<Shaper>,
    pub core: CoreShaper,
    /// Users seen on this worker, by name: their shaper handles.
    pub users: HashMap<Arc<str>, UserHandle>,
    pub rates: Arc<LiveRates>,
}

impl Shaping {
    pub fn new(shaper: Arc<Shaper>, rates: Arc<LiveRates>) -> Shaping {
        Shaping {
            core: CoreShaper::new(shaper.clone()),
            shaper,
            users: HashMap::new(),
            rates,
        }
    }

    /// The handle of `user` at `rate` (`None`: the default), updating its limits if they changed.
    pub fn user(&mut self, user: &Arc<str>, rate: Option<Rate>) -> UserHandle {
        let limits = UserLimits::new(rate.unwrap_or_else(|| self.rates.default_rate()));
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

    /// Turn one of the shaper's deadlines into an `Instant` (`now` is the loop's clock).
    pub fn deadline(&self, now: Instant, at: Nanos) -> Instant {
        let dt = at.0.saturating_sub(self.shaper.now().0);
        now + Duration::from_nanos(dt)
    }
}

/// What the shaper allows the next send of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Up to this many body bytes (`u64::MAX`: not shaped; 0: only the head may go).
    Body(u64),
    /// Nothing until then: park the connection.
    Wait(Instant),
}

/// One connection's shaping state.
#[derive(Default)]
pub struct ConnShaping {
    /// The shaper's key for this connection and the user (or class) it is shaped as.
    shaped: Option<(ConnKey, Arc<str>)>,
    /// Body bytes the shaper granted for the send in flight (unsent ones are refunded).
    granted: u64,
    /// Consecutive times a shaped send found the last grant still unsent (backoff exponent).
    unsent_waits: u8,
    /// Parked until then by the shaper, with no operation in flight: a timer or the shaper's
    /// `ready` list wakes it ([`ShaperWaits`]).
    pub wait: Option<Instant>,
    /// [`ConnShaping::bind`] sized the send buffer from the user's rate (else the connection's
    /// [`SendBufferPolicy`](super::sndbuf::SendBufferPolicy) does).
    sized: bool,
}

impl ConnShaping {
    /// Shape this connection (`token` names it in the shaper's `ready` list) as `user`, or as a
    /// signed link's rate class; a keep-alive connection may change either.
    pub fn bind(
        &mut self,
        shaping: &mut Shaping,
        sock: &mut impl ConnSocket,
        token: u64,
        user: &Arc<str>,
        class: Option<ShapeClass>,
    ) {
        let name = class.as_ref().map_or(user, |(n, _)| n);
        if matches!(&self.shaped, Some((_, u)) if u == name) {
            return;
        }
        if let Some((key, _)) = self.shaped.take() {
            shaping.core.close(key);
        }
        let handle = match (&class, shaping.users.get(name)) {
            (Some((n, rate)), _) => shaping.user(n, Some(*rate)),
            (None, Some(h)) => h.clone(),
            (None, None) => shaping.user(user, None),
        };
        let name = name.clone();
        let key = shaping.core.open_tagged(&handle, token);
        let stats = shaping.shaper.user_stats(&name);
        let rate = stats
            .as_ref()
            .map_or_else(|| shaping.rates.default_rate(), |s| s.limits.rate);
        self.shaped = Some((key, name));
        self.sized = false;
        // A shaped connection needs little send buffer: size it to this connection's share of
        // the user's rate (the user's connections so far, this one included), so that stalled
        // shaped downloads do not pin kernel memory. Unlimited users keep the kernel's
        // autotuning, and cost no syscall here.
        if let Rate::BytesPerSec(b) = rate {
            let conns = stats.map_or(1, |s| s.active_connections.max(1));
            let share = Rate::BytesPerSec(b / u64::from(conns));
            let rtt = sock.rtt().unwrap_or_default();
            if let Some(bytes) = shaping.shaper.config().sndbuf_for(share, rtt) {
                sock.set_send_buffer(bytes as usize);
                self.sized = true;
            }
        }
    }

    /// The send buffer was sized from the user's rate (a shaped user).
    pub fn sized_send_buffer(&self) -> bool {
        self.sized
    }

    /// How many body bytes the next send may carry. `want`: the body bytes left in the current
    /// file piece (capped at one send), `None` when the next bytes are not from a file (heads
    /// and literals are never shaped). `head_done`: the response head is all sent.
    pub fn allowance(
        &mut self,
        shaping: &mut Shaping,
        sock: &impl ConnSocket,
        now: Instant,
        want: Option<u64>,
        head_done: bool,
    ) -> Allowance {
        self.wait = None;
        self.granted = 0;
        let (Some((key, _)), Some(want)) = (&self.shaped, want) else {
            return Allowance::Body(u64::MAX);
        };
        let key = *key;
        // Already found stalled: while the last grant is still unsent, back off without asking
        // the shaper (asking would take a turn in the user's ring, only to give the chunk back).
        let checked = self.unsent_waits > 0 && head_done && shaping.core.is_shaped(key);
        if checked && sock.unsent().is_ok_and(|u| u > 0) {
            return Allowance::Wait(now + unsent_backoff(&mut self.unsent_waits));
        }
        let shaper_now = shaping.shaper.now();
        match shaping.core.request(key, want, shaper_now) {
            // The last grant has not left yet (the client does not read, or reads slowly):
            // queue no more in kernel memory, and give the tokens back for another connection.
            // Look again after a backoff (10 ms doubling to 2.56 s). Checked only when a grant
            // came, and not twice.
            Grant::Send(n)
                if !checked
                    && shaping.core.is_shaped(key)
                    && sock.unsent().is_ok_and(|u| u > 0) =>
            {
                shaping.core.give_back(key, n);
                let wait = unsent_backoff(&mut self.unsent_waits);
                if head_done {
                    Allowance::Wait(now + wait)
                } else {
                    Allowance::Body(0)
                }
            }
            Grant::Send(n) => {
                self.unsent_waits = 0;
                self.granted = n;
                Allowance::Body(n)
            }
            Grant::Wait(at) if head_done => Allowance::Wait(shaping.deadline(now, at)),
            Grant::Wait(_) => Allowance::Body(0),
        }
    }

    /// The send that held the grant is over and took `sent_body` body bytes: the granted bytes
    /// the kernel did not take (all of them when the send failed or would have blocked) go
    /// back to this connection's share, for its next send.
    pub fn refund(&mut self, shaping: &mut Shaping, sent_body: u64) {
        if self.granted == 0 {
            return;
        }
        let unsent = self.granted.saturating_sub(sent_body);
        if let (Some((key, _)), true) = (&self.shaped, unsent > 0) {
            shaping.core.refund(*key, unsent);
        }
        self.granted = 0;
    }

    /// The connection is going away: release its slot in the shaper.
    pub fn close(&mut self, shaping: &mut Shaping) {
        if let Some((key, _)) = self.shaped.take() {
            shaping.core.close(key);
        }
    }
}

/// The next wait of a shaped connection whose last grant is still unsent (`waits` times in a
/// row so far): 10 ms, doubling to 2.56 s.
fn unsent_backoff(waits: &mut u8) -> Duration {
    let wait = Duration::from_millis(10 << (*waits).min(8));
    *waits = waits.saturating_add(1);
    wait
}

/// A worker's connections parked by the shaper, and when the shaper's own poll is due.
#[derive(Default)]
pub struct ShaperWaits {
    /// By the time they may send again (entries whose connection was woken earlier are stale
    /// and skipped).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// When the shaper's background work for waiting connections is due (`CoreShaper::poll`).
    poll_at: Option<Instant>,
}

impl ShaperWaits {
    /// Park connection `token` (whose [`ConnShaping::wait`] is set to `at`) until `at`.
    pub fn park(&mut self, token: u64, at: Instant) {
        self.timers.push(Reverse((at, token)));
    }

    /// Connections parked by the shaper that may send now: their wait is over, or the shaper
    /// filled their chunk early (its `ready` list, after its `poll` if that is due). `unpark`
    /// is asked for each candidate with the deadline it was parked with (`None`: any): it
    /// clears the connection's wait and says whether it was still parked (and open). Each comes
    /// once, for the driver to drive with `Next::Write`.
    pub fn due(
        &mut self,
        shaping: &mut Shaping,
        now: Instant,
        mut unpark: impl FnMut(u64, Option<Instant>) -> bool,
    ) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if unpark(token, Some(at)) {
                due.push(token);
            }
        }
        if self.poll_at.is_none_or(|t| now >= t) {
            self.poll(shaping, now);
        }
        for token in shaping.core.ready() {
            if unpark(token, None) {
                due.push(token);
            }
        }
        due
    }

    /// After connections were driven: if the shaper's poll is not scheduled, schedule it (some
    /// may have just started waiting).
    pub fn arm_poll(&mut self, shaping: &mut Shaping, now: Instant) {
        if self.poll_at.is_none() {
            self.poll(shaping, now);
        }
    }

    /// Run the core shaper's poll and note when it wants the next one. A worker with no
    /// connection waiting on the shaper does not even read the shaper's clock.
    fn poll(&mut self, shaping: &mut Shaping, now: Instant) {
        self.poll_at = if shaping.core.has_waiting() {
            let at = shaping.core.poll(shaping.shaper.now());
            at.map(|at| shaping.deadline(now, at))
        } else {
            None
        };
    }

    /// When the next shaping wait ends or the shaper's poll is due.
    pub fn next(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((at, _))| *at);
        match (t, self.poll_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
