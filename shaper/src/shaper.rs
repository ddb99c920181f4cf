//! The shared half: user classes, the root, and the per-epoch allocator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::clock::{Clock, MonotonicClock, Nanos};
use crate::config::{bytes_in, ShaperConfig, UserLimits};
use crate::fair::{water_fill, Claim};
use crate::Rate;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Demand of a slot whose connections are waiting: as much as the limits allow.
const BACKLOGGED: u64 = u64::MAX;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rate_word(rate: Rate) -> u64 {
    rate.bytes_per_sec().unwrap_or(0)
}

fn word_rate(w: u64) -> Rate {
    if w == 0 {
        Rate::Unlimited
    } else {
        Rate::BytesPerSec(w)
    }
}

/// One core's share of one user: filled by the allocator, drained by that core only.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Tokens allocated to this core and not yet leased (allocator adds, core takes by CAS).
    pub(crate) bucket: AtomicU64,
    /// Written by the core only: bytes granted through this slot, net of refunds.
    pub(crate) granted_cum: AtomicU64,
    /// Written by the core only: connections waiting for tokens.
    pub(crate) backlogged: AtomicU32,
    /// Written by the allocator: the bytes per epoch this slot can expect while backlogged
    /// (its last allocation if it was backlogged, else its share of the user's ceil). Used
    /// only to estimate wait times.
    pub(crate) rate_hint: AtomicU64,
    /// The core has no connection of this user any more; the allocator sweeps the bucket.
    pub(crate) retired: AtomicBool,
    // Allocator-only bookkeeping (atomics so the slot can be shared; never contended).
    allocated_cum: AtomicU64,
    seen_granted: AtomicU64,
}

/// Token-bucket credits of one user, touched only by the allocator.
#[derive(Debug, Default)]
struct Credit {
    /// Assured-rate credit, in byte·nanoseconds (`bytes * 1e9`).
    rate_bn: u128,
    /// Ceil credit, in byte·nanoseconds.
    ceil_bn: u128,
    last_at: Option<u64>,
}

pub(crate) struct UserState {
    pub(crate) name: Box<str>,
    limits: Mutex<UserLimits>,
    /// Unlimited ceil under an unlimited root: requests bypass all accounting.
    pub(crate) fast: AtomicBool,
    /// Grant quantum for this user's connections.
    pub(crate) quantum: AtomicU64,
    pub(crate) conns: AtomicU32,
    /// Bytes granted, flushed by cores once per epoch.
    pub(crate) granted: AtomicU64,
    /// Tokens handed back by cores that stopped serving this user; the allocator credits them.
    pub(crate) spill: AtomicU64,
    pub(crate) slots: Mutex<Vec<Arc<Slot>>>,
    /// In the allocator's list (or its pending queue). Changed under `slots`' lock.
    listed: AtomicBool,
    credit: Mutex<Credit>,
}

/// A user class. Cheap to clone; pass it to [`CoreShaper::open`](crate::CoreShaper::open).
#[derive(Clone)]
pub struct UserHandle(pub(crate) Arc<UserState>);

impl UserHandle {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl std::fmt::Debug for UserHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UserHandle").field(&self.0.name).finish()
    }
}

/// A snapshot of one user class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStats {
    /// The limits in force.
    pub limits: UserLimits,
    /// Bytes granted so far, net of refunds (lags by up to one refill period).
    pub bytes_granted: u64,
    /// Open connections of this user on all cores.
    pub active_connections: u32,
}

/// One user class as [`Shaper::classes`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSnapshot {
    /// The class's name (a user, or `user/CLASS` for a signed link's rate class).
    pub name: String,
    /// Its limits, bytes granted and open connections.
    pub stats: UserStats,
    /// Connections waiting for tokens.
    pub backlogged: u64,
}

struct AllocState {
    last_at: Option<u64>,
    root_bn: u128,
    users: Vec<Arc<UserState>>,
    rotate: usize,
    // Scratch, reused every epoch.
    rows: Vec<Row>,
    slots: Vec<(Arc<Slot>, Claim)>,
    claims: Vec<Claim>,
    out: Vec<u64>,
    order: Vec<usize>,
}

impl Row {
    fn idle(at: usize) -> Row {
        Row {
            rate_cap: 0,
            ceil_cap: 0,
            weight: 1,
            backlogged: 0,
            ceil_per: 0,
            steady: 0,
            hint: 0,
            slots: at..at,
            a1: 0,
            a2: 0,
        }
    }
}

struct Row {
    rate_cap: u64,
    ceil_cap: u64,
    weight: u64,
    backlogged: u64,
    ceil_per: u64,
    /// Demand per period ignoring the outstanding-token cap, and the share that would give:
    /// the rate estimate for wait times, so a transient cap does not lengthen waits.
    steady: u64,
    hint: u64,
    slots: std::ops::Range<usize>,
    a1: u64,
    a2: u64,
}

/// The shaper shared by every worker thread: the root (global rate) and the user classes.
///
/// Each worker wraps it in a [`CoreShaper`](crate::CoreShaper) for the hot path.
pub struct Shaper {
    cfg: ShaperConfig,
    pub(crate) period: u64,
    clock: Arc<dyn Clock>,
    /// Root rate in bytes/s, 0 = unlimited.
    global: AtomicU64,
    users: RwLock<HashMap<Box<str>, Arc<UserState>>>,
    pending: Mutex<Vec<Arc<UserState>>>,
    pub(crate) epoch: AtomicU64,
    pub(crate) next_at: AtomicU64,
    alloc: Mutex<AllocState>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("cfg", &self.cfg)
            .field("global", &self.global_rate())
            .finish_non_exhaustive()
    }
}

impl Shaper {
    /// A shaper on the real clock ([`MonotonicClock`]).
    pub fn new(cfg: ShaperConfig) -> Arc<Shaper> {
        Shaper::with_clock(cfg, Arc::new(MonotonicClock::new()))
    }

    /// A shaper on an injected clock (tests use [`FakeClock`](crate::FakeClock)).
    pub fn with_clock(cfg: ShaperConfig, clock: Arc<dyn Clock>) -> Arc<Shaper> {
        let mut cfg = cfg;
        cfg.min_grant_bytes = cfg.min_grant_bytes.max(1);
        cfg.max_grant_bytes = cfg.max_grant_bytes.max(cfg.min_grant_bytes);
        cfg.lease_bytes = cfg.lease_bytes.max(1);
        Arc::new(Shaper {
            period: cfg.period_nanos(),
            global: AtomicU64::new(rate_word(cfg.global)),
            cfg,
            clock,
            users: RwLock::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            next_at: AtomicU64::new(0),
            alloc: Mutex::new(AllocState {
                last_at: None,
                root_bn: 0,
                users: Vec::new(),
                rotate: 0,
                rows: Vec::new(),
                slots: Vec::new(),
                claims: Vec::new(),
                out: Vec::new(),
                order: Vec::new(),
            }),
        })
    }

    /// The configuration (with `global` as first given; see [`Shaper::global_rate`]).
    pub fn config(&self) -> &ShaperConfig {
        &self.cfg
    }

    /// The injected clock's time.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// The root rate now in force.
    pub fn global_rate(&self) -> Rate {
        word_rate(self.global.load(Ordering::Relaxed))
    }

    /// Changes the root rate; effective at the next epoch (within one refill period).
    pub fn set_global_rate(&self, rate: Rate) {
        self.global.store(rate_word(rate), Ordering::Relaxed);
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner);
        for u in users.values() {
            let lim = *lock(&u.limits);
            u.fast.store(is_fast(lim, rate), Ordering::Relaxed);
        }
    }

    /// The user class called `name`, created with `limits` if it does not exist yet (an
    /// existing class keeps its limits: change them with [`Shaper::set_user_limits`]).
    pub fn user(&self, name: &str, limits: UserLimits) -> UserHandle {
        if let Some(u) = self
            .users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return UserHandle(u.clone());
        }
        let mut users = self.users.write().unwrap_or_else(PoisonError::into_inner);
        let u = users.entry(name.into()).or_insert_with(|| {
            let limits = limits.normalized();
            Arc::new(UserState {
                name: name.into(),
                fast: AtomicBool::new(is_fast(limits, self.global_rate())),
                limits: Mutex::new(limits),
                quantum: AtomicU64::new(self.cfg.min_grant_bytes),
                conns: AtomicU32::new(0),
                granted: AtomicU64::new(0),
                spill: AtomicU64::new(0),
                slots: Mutex::new(Vec::new()),
                listed: AtomicBool::new(false),
                credit: Mutex::new(Credit::default()),
            })
        });
        UserHandle(u.clone())
    }

    /// Changes a user's limits live (effective at the next epoch); creates the user if needed.
    pub fn set_user_limits(&self, name: &str, limits: UserLimits) {
        let u = self.user(name, limits).0;
        let limits = limits.normalized();
        *lock(&u.limits) = limits;
        u.fast
            .store(is_fast(limits, self.global_rate()), Ordering::Relaxed);
    }

    /// Limits, bytes granted and open connections of a user, if it exists.
    pub fn user_stats(&self, name: &str) -> Option<UserStats> {
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner);
        let u = users.get(name)?;
        let stats = UserStats {
            limits: *lock(&u.limits),
            bytes_granted: u.granted.load(Ordering::Relaxed),
            active_connections: u.conns.load(Ordering::Relaxed),
        };
        Some(stats)
    }

    /// Every user class now: name, limits, bytes granted, open connections, and connections
    /// waiting for tokens on all cores (the backlog). Takes the classes' read lock: for metrics,
    /// not for the hot path.
    pub fn classes(&self) -> Vec<ClassSnapshot> {
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner);
        users
            .values()
            .map(|u| ClassSnapshot {
                name: u.name.to_string(),
                stats: UserStats {
                    limits: *lock(&u.limits),
                    bytes_granted: u.granted.load(Ordering::Relaxed),
                    active_connections: u.conns.load(Ordering::Relaxed),
                },
                backlogged: lock(&u.slots)
                    .iter()
                    .map(|s| u64::from(s.backlogged.load(Ordering::Relaxed)))
                    .sum(),
            })
            .collect()
    }

    /// The documented worst-case excess for a user with `limits` under the current root:
    /// over any window of `W` nanoseconds, the bytes granted to the user stay at or below
    /// `ceil × W + error_bound_bytes`. `None` when the user is not shaped at all.
    /// See the [guide](crate::_guide#error-bounds).
    pub fn error_bound_bytes(&self, limits: UserLimits) -> Option<u64> {
        let limits = limits.normalized();
        let ceil = effective_ceil(limits, self.global_rate())?;
        let per = bytes_in(Rate::BytesPerSec(ceil), self.period);
        let depth = self.cfg.depth(limits.burst_bytes, Rate::BytesPerSec(ceil));
        Some(outstanding_cap(limits, per, &self.cfg, 2) + depth + per)
    }

    /// Registers a new per-core slot for `user` (first connection of that user on a core).
    pub(crate) fn add_slot(&self, user: &Arc<UserState>) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let mut slots = lock(&user.slots);
        slots.push(slot.clone());
        if !user.listed.swap(true, Ordering::Relaxed) {
            lock(&self.pending).push(user.clone());
        }
        slot
    }

    /// Runs the allocator if an epoch boundary has passed and no other core is running it.
    pub(crate) fn maybe_allocate(&self, now: Nanos) {
        if now.0 < self.next_at.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut st) = self.alloc.try_lock() else {
            return;
        };
        if now.0 < self.next_at.load(Ordering::Acquire) {
            return;
        }
        // Connections told to wait several periods ask nobody in between, so the periods
        // that passed without a request are allocated now, one by one: the credits of a
        // backlogged user must not be capped at one period just because it was asleep.
        let missed = st.last_at.map_or(0, |t| {
            (now.0.saturating_sub(t) / self.period)
                .saturating_sub(1)
                .min(crate::MAX_WAIT_PERIODS)
        });
        for k in (1..=missed).rev() {
            self.allocate(&mut st, now.0 - k * self.period);
        }
        self.allocate(&mut st, now.0);
        let next = (now.0 / self.period + 1) * self.period;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.next_at.store(next, Ordering::Release);
    }

    fn allocate(&self, st: &mut AllocState, now: u64) {
        let st = &mut *st;
        let period = self.period;
        let global = self.global_rate();
        let dt = st.last_at.map_or(u64::MAX, |t| now.saturating_sub(t));
        st.last_at = Some(now.max(st.last_at.unwrap_or(0)));
        let root_cap = match global {
            Rate::Unlimited => None,
            Rate::BytesPerSec(_) => Some(
                u128::from(self.cfg.depth(self.cfg.global_burst_bytes, global)) * NANOS_PER_SEC,
            ),
        };
        if let (Some(cap), Some(b)) = (root_cap, global.bytes_per_sec()) {
            st.root_bn = (st.root_bn + u128::from(b) * u128::from(dt)).min(cap);
        }
        st.users.append(&mut lock(&self.pending));
        st.rows.clear();
        st.slots.clear();

        // Gather: credits, outstanding tokens and demand of every listed user.
        let mut i = 0;
        while i < st.users.len() {
            let u = st.users[i].clone();
            let mut slots = lock(&u.slots);
            slots.retain(|s| {
                if s.retired.load(Ordering::Acquire) {
                    u.spill
                        .fetch_add(s.bucket.swap(0, Ordering::AcqRel), Ordering::AcqRel);
                    false
                } else {
                    true
                }
            });
            if slots.is_empty() {
                u.listed.store(false, Ordering::Relaxed);
                drop(slots);
                self.return_spill(&u, st, root_cap);
                st.users.swap_remove(i);
                continue;
            }
            let lim = *lock(&u.limits);
            let returned = u.spill.swap(0, Ordering::AcqRel);
            if let Some(cap) = root_cap {
                st.root_bn = (st.root_bn + u128::from(returned) * NANOS_PER_SEC).min(cap);
            }
            let Some(ceil) = effective_ceil(lim, global) else {
                // Fast path user: nothing to allocate.
                drop(slots);
                st.rows.push(Row::idle(st.slots.len()));
                i += 1;
                continue;
            };
            let ceil_per = bytes_in(Rate::BytesPerSec(ceil), period);
            let mut credit = lock(&u.credit);
            let udt = credit.last_at.map_or(u64::MAX, |t| now.saturating_sub(t));
            credit.last_at = Some(now);
            let ceil_cap = u128::from(self.cfg.depth(lim.burst_bytes, Rate::BytesPerSec(ceil)))
                * NANOS_PER_SEC;
            credit.ceil_bn = (credit.ceil_bn
                + u128::from(ceil) * u128::from(udt)
                + u128::from(returned) * NANOS_PER_SEC)
                .min(ceil_cap);
            let rate_cap_bytes = match lim.rate {
                Rate::Unlimited => u64::MAX,
                Rate::BytesPerSec(r) => {
                    let cap = u128::from(self.cfg.depth(lim.burst_bytes, lim.rate)) * NANOS_PER_SEC;
                    credit.rate_bn = (credit.rate_bn + u128::from(r) * u128::from(udt)).min(cap);
                    to_bytes(credit.rate_bn)
                }
            };
            let ceil_bytes = to_bytes(credit.ceil_bn);
            drop(credit);

            let quantum = u.quantum.load(Ordering::Relaxed);
            let start = st.slots.len();
            let mut outstanding: u64 = 0;
            let mut demand: u64 = 0;
            let mut backlogged: u64 = 0;
            for s in slots.iter() {
                let granted = s.granted_cum.load(Ordering::Acquire);
                let held = s
                    .allocated_cum
                    .load(Ordering::Relaxed)
                    .wrapping_sub(granted);
                // A refund after the core's last flush can make `held` look negative.
                let held = if held > u64::MAX / 2 { 0 } else { held };
                let used = granted.wrapping_sub(s.seen_granted.swap(granted, Ordering::Relaxed));
                let used = if used > u64::MAX / 2 { 0 } else { used };
                let waiting = u64::from(s.backlogged.load(Ordering::Acquire));
                let d = if waiting > 0 {
                    BACKLOGGED
                } else {
                    used.saturating_mul(2).max(quantum).saturating_sub(held)
                };
                outstanding = outstanding.saturating_add(held);
                demand = demand.saturating_add(d);
                backlogged += waiting;
                st.slots.push((
                    s.clone(),
                    Claim {
                        cap: d,
                        weight: waiting.max(1),
                    },
                ));
            }
            let cores = slots.len() as u64;
            drop(slots);
            let room = outstanding_cap(lim, ceil_per, &self.cfg, cores).saturating_sub(outstanding);
            let steady = demand.min(ceil_per);
            let demand = demand.min(room);
            st.rows.push(Row {
                steady,
                hint: 0,
                rate_cap: demand.min(rate_cap_bytes).min(ceil_bytes),
                ceil_cap: demand.min(ceil_bytes),
                weight: u64::from(lim.weight.max(1)),
                backlogged,
                ceil_per,
                slots: start..st.slots.len(),
                a1: 0,
                a2: 0,
            });
            i += 1;
        }
        self.divide(st, root_cap.is_some(), bytes_in(global, period));
    }

    /// Root -> users (assured rates first, then borrowing by weight), then user -> slots by
    /// waiting connections.
    fn divide(&self, st: &mut AllocState, root_finite: bool, root_per: u64) {
        let budget = if root_finite {
            to_bytes(st.root_bn)
        } else {
            u64::MAX
        };
        st.rotate = st.rotate.wrapping_add(1);
        let n = st.rows.len();
        st.out.clear();
        st.out.resize(n, 0);
        st.claims.clear();
        st.claims.extend(st.rows.iter().map(|r| Claim {
            cap: r.rate_cap,
            weight: r.weight,
        }));
        water_fill(budget, &st.claims, st.rotate, &mut st.order, &mut st.out);
        let mut used: u64 = 0;
        for (r, &a) in st.rows.iter_mut().zip(&st.out) {
            r.a1 = a;
            used = used.saturating_add(a);
        }
        let budget = budget.saturating_sub(used);
        st.claims.clear();
        st.claims.extend(st.rows.iter().map(|r| Claim {
            cap: r.ceil_cap - r.a1,
            weight: r.weight,
        }));
        water_fill(budget, &st.claims, st.rotate, &mut st.order, &mut st.out);
        for (r, &a) in st.rows.iter_mut().zip(&st.out) {
            r.a2 = a;
        }
        st.claims.clear();
        st.claims.extend(st.rows.iter().map(|r| Claim {
            cap: r.steady,
            weight: r.weight,
        }));
        water_fill(root_per, &st.claims, st.rotate, &mut st.order, &mut st.out);
        for (r, &a) in st.rows.iter_mut().zip(&st.out) {
            r.hint = a;
        }

        for (idx, r) in st.rows.iter().enumerate() {
            let a = r.a1 + r.a2;
            let u = &st.users[idx];
            if r.slots.is_empty() {
                continue;
            }
            {
                let mut credit = lock(&u.credit);
                credit.rate_bn = credit
                    .rate_bn
                    .saturating_sub(u128::from(r.a1) * NANOS_PER_SEC);
                credit.ceil_bn = credit.ceil_bn.saturating_sub(u128::from(a) * NANOS_PER_SEC);
            }
            if root_finite {
                st.root_bn = st.root_bn.saturating_sub(u128::from(a) * NANOS_PER_SEC);
            }
            if r.backlogged > 0 && r.hint > 0 {
                // From the steady per-period share, not this period's allocation: after an
                // idle stretch `a` holds a whole bucket, and a chunk that large could exceed
                // what the held-token cap lets the cores hold at once.
                let conns = u64::from(u.conns.load(Ordering::Relaxed)).max(1);
                let q = (r.hint / conns).clamp(self.cfg.min_grant_bytes, self.cfg.max_grant_bytes);
                u.quantum.store(q, Ordering::Relaxed);
            }
            let slots = &st.slots[r.slots.clone()];
            st.claims.clear();
            st.claims.extend(slots.iter().map(|(_, c)| *c));
            st.out.clear();
            st.out.resize(slots.len(), 0);
            let left = water_fill(a, &st.claims, st.rotate, &mut st.order, &mut st.out);
            let total_weight: u64 = slots.iter().map(|(_, c)| c.weight).sum();
            for ((s, claim), &share) in slots.iter().zip(&st.out) {
                s.allocated_cum.fetch_add(share, Ordering::Relaxed);
                let hint = if claim.cap == BACKLOGGED {
                    share.max(r.hint / total_weight.max(1) * claim.weight)
                } else {
                    r.ceil_per / total_weight.max(1) * claim.weight
                };
                s.rate_hint.store(hint, Ordering::Relaxed);
                s.bucket.fetch_add(share, Ordering::AcqRel);
            }
            if left > 0 {
                u.spill.fetch_add(left, Ordering::AcqRel);
            }
        }
    }

    fn return_spill(&self, u: &UserState, st: &mut AllocState, root_cap: Option<u128>) {
        let returned = u.spill.swap(0, Ordering::AcqRel);
        if let Some(cap) = root_cap {
            st.root_bn = (st.root_bn + u128::from(returned) * NANOS_PER_SEC).min(cap);
        }
        let mut credit = lock(&u.credit);
        credit.ceil_bn = credit
            .ceil_bn
            .saturating_add(u128::from(returned) * NANOS_PER_SEC);
    }
}

fn to_bytes(bn: u128) -> u64 {
    u64::try_from(bn / NANOS_PER_SEC).unwrap_or(u64::MAX)
}

/// Ceil in bytes/s after the root's cap, `None` when the user is not shaped at all.
fn effective_ceil(lim: UserLimits, global: Rate) -> Option<u64> {
    match (lim.ceil, global) {
        (Rate::Unlimited, Rate::Unlimited) => None,
        (Rate::BytesPerSec(c), Rate::Unlimited) => Some(c),
        (Rate::Unlimited, Rate::BytesPerSec(g)) => Some(g),
        (Rate::BytesPerSec(c), Rate::BytesPerSec(g)) => Some(c.min(g)),
    }
}

fn is_fast(lim: UserLimits, global: Rate) -> bool {
    effective_ceil(lim, global).is_none()
}

/// Most tokens a user may hold issued-but-not-granted (slot buckets, core leases, deficits),
/// with connections on `cores` cores. Each core's ring head may hold a partly filled chunk of
/// up to the quantum (at most the per-period share over the connections, or one minimum
/// grant): the cap leaves room for all of them plus a period, so that partly filled chunks
/// can never use up the cap and starve every core of the user.
fn outstanding_cap(lim: UserLimits, ceil_per_period: u64, cfg: &ShaperConfig, cores: u64) -> u64 {
    lim.burst_bytes
        .max(ceil_per_period.saturating_mul(2))
        .saturating_add(cfg.min_grant_bytes.saturating_mul(cores.max(2)))
}
