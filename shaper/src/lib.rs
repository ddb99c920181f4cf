//! Hierarchical bandwidth shaper for weir: root (global rate) → user classes → connections.
//!
//! PLACEHOLDER
#![forbid(unsafe_code)]

pub mod _guide;
mod clock;
mod config;
mod core;
mod fair;
mod rate;
mod shaper;

/// Longest wait handed out, in refill periods, so limit changes reach sleeping connections;
/// also the most periods the allocator catches up after nobody asked.
const MAX_WAIT_PERIODS: u64 = 25;

pub use crate::core::{ConnKey, CoreShaper, Grant};
pub use clock::{Clock, FakeClock, MonotonicClock, Nanos};
pub use config::{suggested_sndbuf, ShaperConfig, UserLimits};
pub use fair::{water_fill, Claim};
pub use rate::{ParseRateError, Rate};
pub use shaper::{Shaper, UserHandle, UserStats};
