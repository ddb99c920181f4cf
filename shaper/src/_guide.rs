//! # Guide: how the shaper works (documentation only)
//!
//! ## Hierarchy
//!
//! ```text
//! root (ShaperConfig::global, global_burst_bytes)
//!  ├── user "alice" (rate, ceil, burst_bytes, weight)
//!  │    ├── core 0 slot ── conn, conn, conn …   (deficit round robin)
//!  │    └── core 1 slot ── conn, conn …
//!  └── user "bob" …
//! ```
//!
//! Tokens flow down and are issued exactly once: the **allocator** moves root credit into
//! per-(user, core) **slots**; each [`CoreShaper`](crate::CoreShaper) leases its slot's tokens
//! (a CAS loop on one `AtomicU64` whose only other writer is the allocator, once per period)
//! and hands them to its connections in **deficit round robin**. Long-run rates are therefore
//! exact: nothing is created on a core, only delayed.
//!
//! ## The allocator (once per refill period)
//!
//! The first request after a period boundary runs it, on whatever core (`try_lock`: a core
//! that finds it busy just carries on). It costs O(u log u) for `u` users with connections.
//! For each such user it accrues token-bucket credits (assured `rate`, `ceil`, each of depth
//! `max(burst_bytes, rate × period, rate × late_slack)`) and estimates demand: a slot with waiting connections
//! wants "as much as allowed"; a slot without wants `max(2 × used last period, quantum)`
//! minus what it still holds. Then, by weighted max-min fairness
//! ([`water_fill`](crate::water_fill)):
//!
//! 1. the root's credit is split over users capped at their assured-rate credit (HTB "green"),
//! 2. what is left is split by weight over users capped at their ceil credit (borrowing),
//! 3. each user's share is split over its cores by the number of waiting connections.
//!
//! A user with an unlimited rate under a finite root thus gets a weighted fair share of the
//! root; a user whose ceil and the root are both unlimited is never allocated at all: its
//! requests take a fast path (`Send(want)`, no shared memory touched except once a period).
//! Periods that passed with no request are allocated one by one on the next request (up to
//! 50), so connections told to sleep several periods lose nothing.
//!
//! ## Fairness inside a user
//!
//! On a core, connections that cannot be served join a FIFO ring; leased tokens fill the
//! chunk of the ring's head, then the next (DRR with quantum = chunk). The chunk ("grant
//! quantum") is the user's steady per-period share divided by its connections, clamped to
//! `min_grant_bytes..=max_grant_bytes` (4 KiB..256 KiB): slow users send small chunks,
//! fast users big ones. A queued chunk shrinks to the current quantum when the user gains
//! connections. A waiting connection is told to come back at the period boundary
//! where the ring will have reached it (bytes ahead of it ÷ the slot's per-period share), at
//! most 50 periods ahead so limit changes reach it (a tagged connection is woken when its chunk
//! fills instead: see Cost). Across cores, each core's slot gets the
//! user's share in proportion to its waiting connections, so 30 connections on core 0 and 10
//! on core 1 get equal per-connection rates.
//!
//! ## Error bounds
//!
//! For a user with effective ceil `c` (its ceil, or the root's rate if lower), period `P`,
//! burst `B`, late slack `S`, min grant `m`, and connections on `k` cores, over **any**
//! window of length `W`:
//!
//! ```text
//! granted(W) ≤ c·W + max(B, c·P, c·S)       ← ceil credit at the window's start
//!                  + max(B, 2·c·P) + max(2, k)·m  ← tokens issued before the window, still held
//!                  + c·P                    ← the allocation at the window's end
//! ```
//!
//! The held-token cap (second line) leaves room for every core's ring head to hold a partly
//! filled chunk at once: were it smaller, those chunks could use it up and no core could ever
//! complete one (the user would stall).
//!
//! [`Shaper::error_bound_bytes`](crate::Shaper::error_bound_bytes) computes exactly this for
//! `k ≤ 2` (add `m` per further core). With the crate's defaults (`B = 0`, `S = 0`,
//! `P = 10 ms`, `m = 4 KiB`): 4 periods of the ceil plus 8 KiB, e.g. 50 KiB for a 1 MiB/s
//! user. weir's engine sets `S = 50 ms`: a timer that fires late on a busy worker then delays
//! bytes instead of losing them (with `S = 0` a bucket holds one period, and the 8,000-
//! connection benchmark ran a steady 1–2% under the caps). The held-token cap (second line) is enforced by the
//! allocator: it never lets a user's issued-but-unsent tokens exceed it. The root obeys the
//! same form with the root's credit plus the sum of its active users' held-token caps. The
//! proptests check both over windows of 1 to 50 periods; the stress test checks the user's
//! total with four threads. The long-run rate has no error beyond one byte per user per
//! period from integer division.
//!
//! What is **not** bounded by this crate: the engine's timer lateness (a late wake-up only
//! delays bytes, never adds any), and bytes the engine sends without asking.
//!
//! ## Cost
//!
//! Per request: a few comparisons and, when a grant is made, one relaxed store to the core's
//! own slot line (read by the allocator once a period). Shared atomics are touched by a core
//! once per period per user (lease, stats), and on the first/last connection of a user on a
//! core (a mutex). See `benches/request.rs`.
//!
//! Per waiting connection, the wake-ups. An untagged connection is told to come back when its
//! chunk should be full at its core's current rate, but at most 50 periods later (so limit
//! changes reach it): a slow connection wakes many times per grant (a 6.5 KB/s connection
//! with 16 KiB chunks, ~6 times). A tagged one ([`CoreShaper::open_tagged`]) is woken through
//! [`CoreShaper::ready`] when DRR fills its chunk, in [`CoreShaper::poll`] (once per period
//! for a core with waiting connections: one pass over the users that have some) or in another
//! connection's request; its `Grant::Wait` is twice the expected fill time, at most
//! `notified_wait`, a safety net that does not fire while the rate holds. The simulation
//! counts 1.00 wake-up per grant at 8,000 such connections. Limit changes reach tagged
//! connections through the same poll: new tokens fill chunks, or a user turned unlimited
//! releases its whole ring.
//!
//! [`CoreShaper::open_tagged`]: crate::CoreShaper::open_tagged
//! [`CoreShaper::ready`]: crate::CoreShaper::ready
//! [`CoreShaper::poll`]: crate::CoreShaper::poll
//!
//! ## Example: two users under a root
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use weir_shaper::*;
//!
//! let clock = Arc::new(FakeClock::new());
//! let cfg = ShaperConfig { global: Rate::BytesPerSec(4 << 20), ..ShaperConfig::default() };
//! let shaper = Shaper::with_clock(cfg, clock.clone());
//! let mut core = CoreShaper::new(shaper.clone());
//! let many = shaper.user("many", UserLimits::unlimited());
//! let one = shaper.user("one", UserLimits::unlimited());
//! let mut conns: Vec<_> = (0..40).map(|_| (core.open(&many), 0u64, Nanos(0))).collect();
//! conns.push((core.open(&one), 0, Nanos(0)));
//! for _ in 0..200 {
//!     let now = Nanos(clock.now_nanos());
//!     for (c, sent, wake) in conns.iter_mut() {
//!         while *wake <= now {
//!             match core.request(*c, 1 << 20, now) {
//!                 Grant::Send(n) => *sent += n,
//!                 Grant::Wait(t) => *wake = t,
//!             }
//!         }
//!     }
//!     clock.advance(Duration::from_millis(10));
//! }
//! let many_total: u64 = conns[..40].iter().map(|c| c.1).sum();
//! let one_total = conns[40].1;
//! // 40 connections or one: the same share of the root (within chunking).
//! let ratio = many_total as f64 / one_total as f64;
//! assert!((0.95..1.05).contains(&ratio), "{ratio}");
//! ```
