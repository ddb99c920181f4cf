//! The per-core half: leases, deficit round robin, grants.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::clock::Nanos;
use crate::shaper::{Shaper, Slot, UserHandle, UserState};
use crate::MAX_WAIT_PERIODS;

/// A connection known to one [`CoreShaper`]. Copy it freely; it is invalid after `close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    idx: u32,
    gen: u32,
}

/// The answer to [`CoreShaper::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Send this many bytes now (> 0, ≤ the bytes wanted).
    Send(u64),
    /// Ask again at this absolute time (never in the past; usually an epoch boundary).
    Wait(Nanos),
}

#[derive(Debug, Default)]
struct Conn {
    gen: u32,
    live: bool,
    user: u32,
    /// Bytes this connection may send without asking the lease (DRR deficit).
    deficit: u64,
    /// Chunk this connection waits for while queued.
    need: u64,
    queued: bool,
    /// `cum_enqueued` of its user just after this connection joined the ring.
    finish: u64,
    /// The engine's name for it ([`CoreShaper::open_tagged`]): reported by
    /// [`CoreShaper::ready`] when its chunk fills while it waits.
    tag: Option<u64>,
}

/// One user as seen from this core.
struct CoreUser {
    user: Arc<UserState>,
    slot: Arc<Slot>,
    conns: u32,
    /// Leased tokens not yet assigned to a connection.
    free: u64,
    /// Waiting connections in DRR order (stale entries of closed connections are skipped).
    ring: VecDeque<(u32, u32)>,
    queued: u32,
    published_queued: u32,
    cum_enqueued: u64,
    cum_assigned: u64,
    epoch: u64,
    fast: bool,
    quantum: u64,
    slot_rate: u64,
    granted_cum: u64,
    unflushed: u64,
    /// In `CoreShaper::waiting` (it has or had queued connections).
    listed: bool,
    /// The last `CoreShaper::poll` that refreshed it (skips duplicates in `waiting`).
    poll_stamp: u64,
}

/// The hot path of one worker thread: per-core leases of each user's tokens and deficit
/// round robin among that user's connections on this core. Not `Sync`: one per thread.
pub struct CoreShaper {
    shaper: Arc<Shaper>,
    epoch: u64,
    next_at: u64,
    period: u64,
    lease_bytes: u64,
    max_grant: u64,
    conns: Vec<Conn>,
    free_conns: Vec<u32>,
    users: Vec<Option<CoreUser>>,
    free_users: Vec<u32>,
    by_user: HashMap<usize, u32>,
    /// Tags of waiting connections whose chunk filled, not yet taken by [`CoreShaper::ready`].
    ready: Vec<u64>,
    /// Users that may have queued connections, for [`CoreShaper::poll`].
    waiting: Vec<u32>,
    polls: u64,
    polled_epoch: u64,
    /// [`ShaperConfig::notified_wait`](crate::ShaperConfig::notified_wait) in periods.
    notified_wait: u64,
}

impl std::fmt::Debug for CoreShaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreShaper")
            .field("connections", &(self.conns.len() - self.free_conns.len()))
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl CoreShaper {
    /// A core's view of `shaper`. Create one per worker thread.
    pub fn new(shaper: Arc<Shaper>) -> CoreShaper {
        let cfg = shaper.config();
        let notified_wait =
            (crate::clock::duration_nanos(cfg.notified_wait) / shaper.period).max(1);
        CoreShaper {
            period: shaper.period,
            lease_bytes: cfg.lease_bytes,
            max_grant: cfg.max_grant_bytes,
            shaper,
            epoch: u64::MAX,
            next_at: 0,
            conns: Vec::new(),
            free_conns: Vec::new(),
            users: Vec::new(),
            free_users: Vec::new(),
            by_user: HashMap::new(),
            ready: Vec::new(),
            waiting: Vec::new(),
            polls: 0,
            polled_epoch: u64::MAX,
            notified_wait,
        }
    }

    /// The shared shaper.
    pub fn shaper(&self) -> &Arc<Shaper> {
        &self.shaper
    }

    /// A connection of `user` starts on this core. It is told to wait at most 50 periods
    /// at a time (see [`open_tagged`](Self::open_tagged) for an engine that wakes it instead).
    pub fn open(&mut self, user: &UserHandle) -> ConnKey {
        self.open_inner(user, None)
    }

    /// A connection of `user` starts on this core, named `tag` by the engine. When it must
    /// wait, its chunk is filled in the background by [`poll`](Self::poll) (and by other
    /// connections' requests) and its tag then appears in [`ready`](Self::ready): the engine
    /// wakes it then, and the `Grant::Wait` it got is only a safety net
    /// ([`ShaperConfig::notified_wait`](crate::ShaperConfig::notified_wait)). One wake-up per
    /// grant instead of one per guess: that is what shaping many slow connections costs.
    pub fn open_tagged(&mut self, user: &UserHandle, tag: u64) -> ConnKey {
        self.open_inner(user, Some(tag))
    }

    fn open_inner(&mut self, user: &UserHandle, tag: Option<u64>) -> ConnKey {
        let key = Arc::as_ptr(&user.0) as usize;
        let ui = match self.by_user.get(&key) {
            Some(&ui) => ui,
            None => {
                let slot = self.shaper.add_slot(&user.0);
                let cu = CoreUser {
                    user: user.0.clone(),
                    slot,
                    conns: 0,
                    free: 0,
                    ring: VecDeque::new(),
                    queued: 0,
                    published_queued: 0,
                    cum_enqueued: 0,
                    cum_assigned: 0,
                    epoch: u64::MAX,
                    fast: false,
                    quantum: 0,
                    slot_rate: 0,
                    granted_cum: 0,
                    unflushed: 0,
                    listed: false,
                    poll_stamp: 0,
                };
                let ui = match self.free_users.pop() {
                    Some(ui) => {
                        self.users[ui as usize] = Some(cu);
                        ui
                    }
                    None => {
                        self.users.push(Some(cu));
                        u32::try_from(self.users.len() - 1).expect("too many users on one core")
                    }
                };
                self.by_user.insert(key, ui);
                ui
            }
        };
        let cu = self.users[ui as usize].as_mut().expect("live user");
        cu.conns += 1;
        cu.user.conns.fetch_add(1, Ordering::Relaxed);
        let idx = match self.free_conns.pop() {
            Some(idx) => idx,
            None => {
                self.conns.push(Conn::default());
                u32::try_from(self.conns.len() - 1).expect("too many connections on one core")
            }
        };
        let c = &mut self.conns[idx as usize];
        *c = Conn {
            gen: c.gen,
            live: true,
            user: ui,
            tag,
            ..Conn::default()
        };
        ConnKey { idx, gen: c.gen }
    }

    /// The connection ends; its unused deficit goes back to the core's lease of that user,
    /// and the lease back to the user when the user has no connection left on this core.
    pub fn close(&mut self, conn: ConnKey) {
        let ci = self.check(conn);
        let c = &mut self.conns[ci];
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        let ui = c.user as usize;
        let deficit = std::mem::take(&mut c.deficit);
        let was_queued = std::mem::take(&mut c.queued);
        let lack = c.need.saturating_sub(deficit);
        self.free_conns.push(conn.idx);
        let cu = self.users[ui].as_mut().expect("live user");
        cu.free += deficit;
        if was_queued {
            cu.queued -= 1;
            cu.cum_assigned += lack;
        }
        cu.user.conns.fetch_sub(1, Ordering::Relaxed);
        cu.conns -= 1;
        if cu.conns > 0 {
            publish_queued(cu);
            return;
        }
        let cu = self.users[ui].take().expect("live user");
        self.by_user.remove(&(Arc::as_ptr(&cu.user) as usize));
        self.free_users.push(ui as u32);
        cu.user.granted.fetch_add(cu.unflushed, Ordering::Relaxed);
        cu.user.spill.fetch_add(cu.free, Ordering::AcqRel);
        cu.slot.backlogged.store(0, Ordering::Release);
        cu.slot.retired.store(true, Ordering::Release);
    }

    /// How many bytes `conn` may send now (at most `want`), or when to ask again.
    ///
    /// `now` should come from the shaper's clock. A `want` of 0 gets a wait.
    pub fn request(&mut self, conn: ConnKey, want: u64, now: Nanos) -> Grant {
        if now.0 >= self.next_at {
            self.tick(now);
        }
        let ci = self.check(conn);
        let ui = self.conns[ci].user as usize;
        let cu = self.users[ui].as_mut().expect("live user");
        if cu.epoch != self.epoch {
            refresh(
                cu,
                self.epoch,
                &mut self.conns,
                self.lease_bytes,
                &mut self.ready,
            );
        }
        if cu.fast && want > 0 {
            cu.unflushed += want;
            return Grant::Send(want);
        }
        let c = &mut self.conns[ci];
        let need = want.min(cu.quantum);
        // A deficit outside the ring (a refund, or the rest of a grant larger than `want`)
        // is sent as it is: waiting to top it up would hold tokens idle.
        if want > 0 && !c.queued && c.deficit > 0 && (c.deficit >= need || cu.queued > 0) {
            return grant(cu, c, want, self.max_grant);
        }
        if want > 0 && !c.queued {
            let lack = need - c.deficit;
            // Free tokens here are a closed connection's deficit (the ring got everything
            // else): whoever asks first uses them rather than the ring head, which may be
            // asleep until a later period.
            if cu.queued == 0 && cu.free < lack {
                pull(cu, lack.max(self.lease_bytes));
            }
            if cu.free >= lack {
                cu.free -= lack;
                c.deficit += lack;
                return grant(cu, c, want, self.max_grant);
            }
            c.queued = true;
            c.need = need;
            cu.cum_enqueued += lack;
            c.finish = cu.cum_enqueued;
            cu.ring.push_back((conn.idx, conn.gen));
            cu.queued += 1;
            if !cu.listed {
                cu.listed = true;
                self.waiting.push(ui as u32);
            }
        } else if c.queued {
            let lack = cu.cum_enqueued.saturating_sub(cu.cum_assigned);
            pull(cu, lack.max(self.lease_bytes));
        }
        distribute(cu, &mut self.conns, &mut self.ready);
        let c = &mut self.conns[ci];
        if want > 0 && !c.queued && c.deficit >= want.min(c.need.max(1)) {
            publish_queued(cu);
            return grant(cu, c, want, self.max_grant);
        }
        publish_queued(cu);
        let ahead = c.finish.saturating_sub(cu.cum_assigned);
        let epochs = match (c.queued, c.tag, cu.slot_rate) {
            // Woken through `ready` when its chunk fills; the wait is only a safety net, set
            // well past when the chunk should fill at the current rate.
            (true, Some(_), 0) => self.notified_wait,
            (true, Some(_), r) => (2 * ahead.div_ceil(r) + 2).min(self.notified_wait),
            (true, None, r) if r > 0 => ahead.div_ceil(r).clamp(1, MAX_WAIT_PERIODS),
            _ => 1,
        };
        let t = self.next_at + (epochs - 1) * self.period;
        let t = if t > now.0 {
            t
        } else {
            // Another core is running the allocator right now.
            now.0 + (self.period / 8).max(1)
        };
        Grant::Wait(Nanos(t))
    }

    /// Whether `conn` is shaped at all: `false` for a user with no ceil under no global rate,
    /// whose requests take the fast path (as of the last epoch this core saw).
    pub fn is_shaped(&self, conn: ConnKey) -> bool {
        let ci = self.check(conn);
        let cu = self.users[self.conns[ci].user as usize]
            .as_ref()
            .expect("live user");
        !cu.fast
    }

    /// `bytes` of an earlier grant were not sent (short write): they go back to `conn`.
    pub fn refund(&mut self, conn: ConnKey, bytes: u64) {
        self.ungrant(conn, bytes, false);
    }

    /// `bytes` of a grant to `conn` will not be sent now (its client is not reading): they
    /// go back to the user's pool on this core for its other connections, instead of staying
    /// with `conn` as a [`refund`](Self::refund) would.
    pub fn give_back(&mut self, conn: ConnKey, bytes: u64) {
        self.ungrant(conn, bytes, true);
    }

    /// Undo `bytes` of a grant: to the connection's deficit, or (`to_pool`) to the user's
    /// tokens on this core, handed on to waiting connections at once.
    fn ungrant(&mut self, conn: ConnKey, bytes: u64, to_pool: bool) {
        let ci = self.check(conn);
        let ui = self.conns[ci].user as usize;
        let cu = self.users[ui].as_mut().expect("live user");
        if cu.fast {
            cu.unflushed = cu.unflushed.saturating_sub(bytes);
            return;
        }
        let bytes = bytes.min(cu.granted_cum);
        cu.granted_cum -= bytes;
        cu.unflushed = cu.unflushed.saturating_sub(bytes);
        cu.slot.granted_cum.store(cu.granted_cum, Ordering::Release);
        if to_pool {
            cu.free += bytes;
            distribute(cu, &mut self.conns, &mut self.ready);
        } else {
            self.conns[ci].deficit += bytes;
        }
    }

    /// Open connections on this core.
    pub fn connections(&self) -> usize {
        self.conns.len() - self.free_conns.len()
    }

    /// Background work for waiting connections; call it at the time it returns (and whenever
    /// convenient). At an epoch boundary it runs the allocator if no core has, then hands each
    /// user's new tokens on this core to its waiting connections; those whose chunk fills are
    /// reported by [`ready`](Self::ready). Returns when to call again, or `None` while no
    /// connection on this core waits. Only connections opened with
    /// [`open_tagged`](Self::open_tagged) need it; the others find their tokens when they ask.
    pub fn poll(&mut self, now: Nanos) -> Option<Nanos> {
        if self.waiting.is_empty() {
            return None;
        }
        if now.0 >= self.next_at {
            self.tick(now);
        }
        // Past `next_at`: another core is running the allocator right now.
        let next = Nanos(self.next_at.max(now.0 + (self.period / 8).max(1)));
        if self.polled_epoch == self.epoch {
            return Some(next);
        }
        self.polled_epoch = self.epoch;
        self.polls += 1;
        let (stamp, epoch, lease) = (self.polls, self.epoch, self.lease_bytes);
        let (users, conns, ready) = (&mut self.users, &mut self.conns, &mut self.ready);
        self.waiting.retain(|&ui| {
            let Some(cu) = users[ui as usize].as_mut() else {
                return false;
            };
            if cu.poll_stamp == stamp || !cu.listed {
                // A duplicate, or a reused slot's stale entry.
                return false;
            }
            cu.poll_stamp = stamp;
            if cu.epoch != epoch {
                refresh(cu, epoch, conns, lease, ready);
            }
            cu.listed = cu.queued > 0;
            cu.listed
        });
        (!self.waiting.is_empty()).then_some(next)
    }

    /// Whether some connection on this core may be waiting (else [`poll`](Self::poll) has
    /// nothing to do and returns `None`).
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Tags of connections whose chunk filled while they waited (see
    /// [`open_tagged`](Self::open_tagged)): the engine wakes them to ask again. A tag may
    /// come when its connection is not waiting any more (it asked first); ignore it then.
    pub fn ready(&mut self) -> std::vec::Drain<'_, u64> {
        self.ready.drain(..)
    }

    fn tick(&mut self, now: Nanos) {
        self.shaper.maybe_allocate(now);
        self.epoch = self.shaper.epoch.load(Ordering::Acquire);
        self.next_at = self.shaper.next_at.load(Ordering::Acquire);
    }

    fn check(&self, key: ConnKey) -> usize {
        let ci = key.idx as usize;
        match self.conns.get(ci) {
            Some(c) if c.live && c.gen == key.gen => ci,
            _ => panic!("ConnKey {key:?} used after close or on another core"),
        }
    }
}

fn grant(cu: &mut CoreUser, c: &mut Conn, want: u64, max_grant: u64) -> Grant {
    let g = want.min(c.deficit).min(max_grant);
    c.deficit -= g;
    cu.granted_cum += g;
    cu.unflushed += g;
    cu.slot.granted_cum.store(cu.granted_cum, Ordering::Release);
    Grant::Send(g)
}

/// New epoch for this user on this core: reload limits, flush stats, lease new tokens.
fn refresh(
    cu: &mut CoreUser,
    epoch: u64,
    conns: &mut [Conn],
    lease_bytes: u64,
    ready: &mut Vec<u64>,
) {
    cu.epoch = epoch;
    cu.fast = cu.user.fast.load(Ordering::Relaxed);
    cu.quantum = cu.user.quantum.load(Ordering::Relaxed);
    cu.slot_rate = cu.slot.rate_hint.load(Ordering::Relaxed);
    if cu.unflushed > 0 {
        cu.user
            .granted
            .fetch_add(std::mem::take(&mut cu.unflushed), Ordering::Relaxed);
    }
    if cu.fast {
        for &(ci, gen) in &cu.ring {
            let c = &mut conns[ci as usize];
            if c.gen == gen && c.queued {
                c.queued = false;
                ready.extend(c.tag);
            }
        }
        cu.ring.clear();
        cu.queued = 0;
        publish_queued(cu);
        return;
    }
    if cu.queued > 0 {
        let lack = cu.cum_enqueued.saturating_sub(cu.cum_assigned);
        pull(cu, lack.max(lease_bytes));
        distribute(cu, conns, ready);
        publish_queued(cu);
    }
}

/// Moves up to `max` tokens from the shared slot bucket into the core's lease (CAS loop; the
/// only other writer is the allocator adding once per epoch).
fn pull(cu: &mut CoreUser, max: u64) {
    let bucket = &cu.slot.bucket;
    let mut level = bucket.load(Ordering::Acquire);
    while level > 0 {
        let take = level.min(max);
        match bucket.compare_exchange_weak(level, level - take, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                cu.free += take;
                return;
            }
            Err(now) => level = now,
        }
    }
}

/// Deficit round robin: the leased tokens fill waiting connections' chunks in ring order;
/// tagged connections whose chunk is full go to `ready`.
fn distribute(cu: &mut CoreUser, conns: &mut [Conn], ready: &mut Vec<u64>) {
    while cu.free > 0 {
        let Some(&(ci, gen)) = cu.ring.front() else {
            break;
        };
        let c = &mut conns[ci as usize];
        if c.gen != gen || !c.queued {
            cu.ring.pop_front();
            continue;
        }
        // A chunk sized when the user had fewer connections shrinks to today's quantum (see
        // `outstanding_cap`: a large stale chunk could otherwise never be filled).
        c.need = c.need.min(cu.quantum.max(1));
        let give = c.need.saturating_sub(c.deficit).min(cu.free);
        c.deficit += give;
        cu.free -= give;
        cu.cum_assigned += give;
        if c.deficit < c.need {
            break;
        }
        cu.ring.pop_front();
        c.queued = false;
        cu.queued -= 1;
        ready.extend(c.tag);
    }
}

fn publish_queued(cu: &mut CoreUser) {
    if cu.published_queued != cu.queued {
        cu.published_queued = cu.queued;
        cu.slot.backlogged.store(cu.queued, Ordering::Release);
    }
}
