//! A deterministic event-driven simulation of an engine driving the shaper.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use weir_shaper::{ConnKey, CoreShaper, FakeClock, Grant, Nanos, Shaper, ShaperConfig, UserHandle};

pub const MS: u64 = 1_000_000;

pub struct SimConn {
    pub core: usize,
    pub key: ConnKey,
    pub user: usize,
    /// Backlogged from this time on (None = idle).
    pub active_from: Option<u64>,
    pub active_until: u64,
    pub want: u64,
    /// (time, bytes) of every grant.
    pub grants: Vec<(u64, u64)>,
    pub waits: u64,
    /// Close the connection at `active_until` (else it just stops asking).
    pub close_at_end: bool,
    pub closed: bool,
    /// Bumped whenever the connection is scheduled: queue entries of older schedules are stale.
    seq: u64,
    /// Waiting for a grant (a `Grant::Wait` came and no wake-up yet).
    waiting: bool,
}

/// Queue entries for connections' `active_until` (never stale).
const UNTIL: u64 = u64::MAX;

pub struct Sim {
    pub clock: Arc<FakeClock>,
    pub shaper: Arc<Shaper>,
    pub cores: Vec<CoreShaper>,
    pub conns: Vec<SimConn>,
    pub users: Vec<UserHandle>,
    /// Wake waiting connections up to this many nanoseconds late (pseudo-random, repeatable),
    /// as a busy event loop does.
    pub late_max: u64,
    /// Ask again this long after a grant (the send's completion), instead of at once.
    pub send_delay: u64,
    /// Open connections untagged: no `poll`, no `ready` wake-ups, only `Grant::Wait` times
    /// (the simple way to drive the shaper). Default: tagged, as weir's engine does.
    pub untagged: bool,
    /// Wake-ups of each kind, for tests that count them: (timer, ready).
    pub wakeups: (u64, u64),
    rng: u64,
    /// (time, connection or POLL + core, seq).
    queue: BinaryHeap<Reverse<(u64, usize, u64)>>,
    poll_at: Vec<Option<u64>>,
}

/// Queue ids at and above this are a core's `poll`.
const POLL: usize = usize::MAX / 2;

impl Sim {
    pub fn new(cfg: ShaperConfig, cores: usize) -> Sim {
        let clock = Arc::new(FakeClock::new());
        let shaper = Shaper::with_clock(cfg, clock.clone());
        Sim {
            cores: (0..cores)
                .map(|_| CoreShaper::new(shaper.clone()))
                .collect(),
            clock,
            shaper,
            conns: Vec::new(),
            users: Vec::new(),
            late_max: 0,
            send_delay: 0,
            untagged: false,
            wakeups: (0, 0),
            rng: 0x9e37_79b9_7f4a_7c15,
            queue: BinaryHeap::new(),
            poll_at: vec![None; cores],
        }
    }

    pub fn add_user(&mut self, user: UserHandle) -> usize {
        self.users.push(user);
        self.users.len() - 1
    }

    /// A connection of `user` on `core`, backlogged on [from, until).
    pub fn add_conn(&mut self, user: usize, core: usize, from: u64, until: u64) -> usize {
        let id = self.conns.len();
        let key = if self.untagged {
            self.cores[core].open(&self.users[user])
        } else {
            self.cores[core].open_tagged(&self.users[user], id as u64)
        };
        self.conns.push(SimConn {
            core,
            key,
            user,
            active_from: Some(from),
            active_until: until,
            want: 1 << 30,
            grants: Vec::new(),
            waits: 0,
            close_at_end: false,
            closed: false,
            seq: 0,
            waiting: false,
        });
        self.queue.push(Reverse((from, id, 0)));
        if until != u64::MAX {
            self.queue.push(Reverse((until, id, UNTIL)));
        }
        id
    }

    fn late(&mut self) -> u64 {
        if self.late_max == 0 {
            return 0;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % self.late_max
    }

    /// Schedule connection `id` at `t` (replacing its earlier schedule).
    fn schedule(&mut self, id: usize, t: u64) {
        let c = &mut self.conns[id];
        c.seq += 1;
        self.queue.push(Reverse((t, id, c.seq)));
    }

    /// After a request or poll on `core` at `t`: wake the connections whose chunk filled, and
    /// keep the core's poll scheduled, as the engine does.
    fn after(&mut self, core: usize, t: u64) {
        if self.untagged {
            return;
        }
        self.wake_ready(core, t);
        if self.poll_at[core].is_none_or(|p| p <= t) {
            self.poll_at[core] = self.cores[core].poll(Nanos(t)).map(|n| n.0);
            if let Some(p) = self.poll_at[core] {
                let late = self.late();
                self.queue.push(Reverse((p + late, POLL + core, 0)));
            }
            self.wake_ready(core, t);
        }
    }

    fn wake_ready(&mut self, core: usize, t: u64) {
        let ready: Vec<u64> = self.cores[core].ready().collect();
        for id in ready {
            let id = id as usize;
            if self.conns[id].waiting && !self.conns[id].closed {
                self.conns[id].waiting = false;
                self.wakeups.1 += 1;
                let late = self.late();
                self.schedule(id, t + late);
            }
        }
    }

    /// Runs every request due before `end` (exclusive), in time order.
    pub fn run_until(&mut self, end: u64) {
        while let Some(&Reverse((t, id, seq))) = self.queue.peek() {
            if t >= end {
                break;
            }
            self.queue.pop();
            self.clock.set(Nanos(t));
            if id >= POLL {
                let core = id - POLL;
                if self.poll_at[core].is_some_and(|p| p <= t) {
                    self.poll_at[core] = None;
                    self.after(core, t);
                }
                continue;
            }
            let c = &mut self.conns[id];
            if c.closed || (seq != UNTIL && seq != c.seq) {
                continue;
            }
            let core = c.core;
            if t >= c.active_until {
                if c.close_at_end {
                    c.closed = true;
                    self.cores[core].close(c.key);
                    self.after(core, t);
                }
                continue;
            }
            if seq == UNTIL {
                continue;
            }
            if c.waiting {
                self.wakeups.0 += 1;
            }
            c.waiting = false;
            match self.cores[core].request(c.key, c.want, Nanos(t)) {
                Grant::Send(n) => {
                    let c = &mut self.conns[id];
                    assert!(n > 0 && n <= c.want);
                    c.grants.push((t, n));
                    let d = self.send_delay;
                    self.schedule(id, t + d);
                }
                Grant::Wait(at) => {
                    assert!(at.0 > t, "wait in the past: {at:?} at {t}");
                    let c = &mut self.conns[id];
                    c.waits += 1;
                    c.waiting = true;
                    let late = self.late();
                    self.schedule(id, at.0 + late);
                }
            }
            self.after(core, t);
        }
        self.clock.set(Nanos(end));
    }

    pub fn bytes(&self, conn: usize, from: u64, to: u64) -> u64 {
        self.conns[conn]
            .grants
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn user_bytes(&self, user: usize, from: u64, to: u64) -> u64 {
        (0..self.conns.len())
            .filter(|&c| self.conns[c].user == user)
            .map(|c| self.bytes(c, from, to))
            .sum()
    }

    /// All grants of a user (time, bytes), sorted by time.
    pub fn user_grants(&self, user: usize) -> Vec<(u64, u64)> {
        let mut g: Vec<_> = self
            .conns
            .iter()
            .filter(|c| c.user == user)
            .flat_map(|c| c.grants.iter().copied())
            .collect();
        g.sort_unstable();
        g
    }
}

pub fn jain(xs: &[f64]) -> f64 {
    let s: f64 = xs.iter().sum();
    let s2: f64 = xs.iter().map(|x| x * x).sum();
    s * s / (xs.len() as f64 * s2)
}

/// Largest sum of grants in any window of `w` ns (sliding over grant times).
pub fn max_window(grants: &[(u64, u64)], w: u64) -> u64 {
    let mut best = 0;
    let mut sum = 0;
    let mut lo = 0;
    for hi in 0..grants.len() {
        sum += grants[hi].1;
        while grants[hi].0 - grants[lo].0 >= w {
            sum -= grants[lo].1;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

pub fn period() -> Duration {
    Duration::from_millis(10)
}
