//! Limits of a user class and of the whole shaper.

use std::time::Duration;

use crate::Rate;

/// The limits of one user class (HTB terms: rate, ceil, burst, weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserLimits {
    /// Assured rate: served before any borrowing, while the root has it.
    pub rate: Rate,
    /// Maximum rate when borrowing spare root capacity; treated as `max(rate, ceil)`.
    pub ceil: Rate,
    /// Bytes the user may send above `ceil` after being idle (token-bucket depth beyond one
    /// refill period's worth).
    pub burst_bytes: u64,
    /// Share of spare capacity relative to other backlogged users (0 counts as 1).
    pub weight: u32,
}

impl UserLimits {
    /// A user capped at `rate` (ceil = rate, no burst beyond one refill period, weight 1).
    pub fn new(rate: Rate) -> UserLimits {
        UserLimits {
            rate,
            ceil: rate,
            burst_bytes: 0,
            weight: 1,
        }
    }

    /// No cap of its own: a fair share of the global rate (or everything when that is
    /// unlimited too).
    pub fn unlimited() -> UserLimits {
        UserLimits::new(Rate::Unlimited)
    }

    /// `ceil` raised to at least `rate`, weight at least 1.
    pub(crate) fn normalized(mut self) -> UserLimits {
        self.ceil = max_rate(self.rate, self.ceil);
        self.weight = self.weight.max(1);
        self
    }
}

fn max_rate(a: Rate, b: Rate) -> Rate {
    match (a, b) {
        (Rate::BytesPerSec(x), Rate::BytesPerSec(y)) => Rate::BytesPerSec(x.max(y)),
        _ => Rate::Unlimited,
    }
}

/// Configuration of a [`Shaper`](crate::Shaper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShaperConfig {
    /// Root rate: the cap for the whole host.
    pub global: Rate,
    /// Root bucket depth beyond one refill period's worth.
    pub global_burst_bytes: u64,
    /// Length of an allocation epoch; `Grant::Wait` times are epoch boundaries.
    pub refill_period: Duration,
    /// Most bytes a core moves from its per-user bucket into its local lease at once.
    pub lease_bytes: u64,
    /// Smallest grant quantum (a connection waits until it may send at least this much,
    /// unless it wants less).
    pub min_grant_bytes: u64,
    /// Largest single grant.
    pub max_grant_bytes: u64,
}

impl Default for ShaperConfig {
    fn default() -> Self {
        ShaperConfig {
            global: Rate::Unlimited,
            global_burst_bytes: 0,
            refill_period: Duration::from_millis(10),
            lease_bytes: 256 * 1024,
            min_grant_bytes: 4 * 1024,
            max_grant_bytes: 256 * 1024,
        }
    }
}

impl ShaperConfig {
    pub(crate) fn period_nanos(&self) -> u64 {
        crate::clock::duration_nanos(self.refill_period).max(1_000)
    }
}

/// Bytes of `rate` in `nanos`, rounded down (`u64::MAX` for unlimited).
pub(crate) fn bytes_in(rate: Rate, nanos: u64) -> u64 {
    match rate {
        Rate::Unlimited => u64::MAX,
        Rate::BytesPerSec(b) => {
            u64::try_from(u128::from(b) * u128::from(nanos) / 1_000_000_000).unwrap_or(u64::MAX)
        }
    }
}

/// A socket send buffer sized to a shaped connection's share: about four grant quanta of
/// `rate` (rate × 10 ms, clamped to 4 KiB..256 KiB), at least 16 KiB. `None` when unlimited:
/// leave the kernel's autotuning alone.
///
/// Pass the connection's expected share (user rate / connections) for the smallest buffers.
///
/// ```
/// use weir_shaper::{suggested_sndbuf, Rate};
/// assert_eq!(suggested_sndbuf(Rate::Unlimited), None);
/// assert_eq!(suggested_sndbuf("256KiB".parse().unwrap()), Some(16 * 1024));
/// assert_eq!(suggested_sndbuf("100MiB".parse().unwrap()), Some(1024 * 1024));
/// ```
pub fn suggested_sndbuf(rate: Rate) -> Option<u32> {
    let b = rate.bytes_per_sec()?;
    let quantum = (b / 100).clamp(4 * 1024, 256 * 1024);
    Some(u32::try_from((4 * quantum).max(16 * 1024)).unwrap_or(u32::MAX))
}
