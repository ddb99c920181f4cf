//! Hierarchical bandwidth shaper for weir: root (global rate) → user classes → connections.
//!
//! **What it is for.** Answering, for every chunk a download connection wants to send, "send
//! N bytes now" or "ask again at time T", so that
//! - the host never sends more than the global rate,
//! - a user never gets more than its `ceil` *across all of its connections and cores* (a
//!   download manager's 40 connections share one cap), and gets its assured `rate` first,
//! - spare capacity goes to backlogged users by weight (work-conserving, like Linux HTB),
//! - inside a user, connections share by deficit round robin on bytes.
//!
//! **What it is not for.** It does no I/O, owns no timers and never sleeps: the engine arms a
//! timer for [`Grant::Wait`]. An engine that can wake a connection by name opens it with
//! [`CoreShaper::open_tagged`], calls [`CoreShaper::poll`] when it says and wakes the tags
//! [`CoreShaper::ready`] reports: each waiting connection then wakes once per grant, when its
//! chunk is full, instead of whenever a guessed wait runs out (the example below is the
//! simple, untagged way). It does not pace packets inside a grant, does not shape uploads,
//! and does not share limits between hosts (that is a lease layer above it).
//!
//! **Shape.** One [`Shaper`] (in an `Arc`) is shared by every worker thread; each worker owns
//! a [`CoreShaper`] whose hot path touches only its own memory most of the time. Time is
//! injected ([`Clock`]): [`MonotonicClock`] in production, [`FakeClock`] in tests.
//! The design, its costs and its worst-case error are in the [`_guide`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use weir_shaper::{CoreShaper, FakeClock, Grant, Nanos, Rate, Shaper, ShaperConfig, UserLimits};
//!
//! let clock = Arc::new(FakeClock::new());
//! let cfg = ShaperConfig { global: "1Gbit".parse().unwrap(), ..ShaperConfig::default() };
//! let shaper = Shaper::with_clock(cfg, clock.clone());
//! // 40 connections × 4 KiB per 10 ms period.
//! let alice = shaper.user("alice", UserLimits::new(Rate::BytesPerSec(16_384_000)));
//!
//! let mut core = CoreShaper::new(shaper.clone()); // one per worker thread
//! let conns: Vec<_> = (0..40).map(|_| core.open(&alice)).collect();
//! let mut sent = vec![0u64; 40];
//! let mut wake = vec![Nanos(0); 40];
//! for period in 0..100 {
//!     if period == 50 {
//!         sent.fill(0); // measure the last half second only
//!     }
//!     let now = Nanos(clock.now_nanos());
//!     for (i, &c) in conns.iter().enumerate() {
//!         while wake[i] <= now {
//!             match core.request(c, 1 << 20, now) {
//!                 Grant::Send(n) => sent[i] += n, // write n bytes, then ask again
//!                 Grant::Wait(t) => wake[i] = t,  // arm a timer for t
//!             }
//!         }
//!     }
//!     clock.advance(Duration::from_millis(10));
//! }
//! // Every connection got exactly 4 KiB per 10 ms: 50 periods × 4096 bytes.
//! assert!(sent.iter().all(|&b| b == 50 * 4096), "{sent:?}");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod _guide;
mod clock;
mod config;
mod core;
mod fair;
mod rate;
mod shaper;

/// Longest wait handed out to an untagged connection, in refill periods (half a second by
/// default), so limit changes reach sleeping connections; also the most periods the allocator
/// catches up after nobody asked. Every waiting untagged connection wakes at least this often,
/// which was most of what shaping many slow connections cost before tagged connections
/// (`CoreShaper::open_tagged`): 25 (the first choice) woke 8,000 connections 32,000 times a
/// second, 50 still 18,500.
const MAX_WAIT_PERIODS: u64 = 50;

pub use crate::core::{ConnKey, CoreShaper, Grant};
pub use clock::{Clock, FakeClock, MonotonicClock, Nanos};
pub use config::{ShaperConfig, UserLimits};
pub use fair::{water_fill, Claim};
pub use rate::{ParseRateError, Rate};
pub use shaper::{ClassSnapshot, Shaper, UserHandle, UserStats};
