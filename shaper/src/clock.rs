//! Injected time: the shaper never reads a clock on its own decision path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds since an arbitrary epoch (the clock's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_add(duration_nanos(d)))
    }
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// The current time; never goes backwards.
    fn now(&self) -> Nanos;
}

/// The real clock: nanoseconds since the clock was created, from [`Instant`].
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose zero is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        Nanos(duration_nanos(self.origin.elapsed()))
    }
}

/// A clock that only moves when told to: tests advance it by hand.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: AtomicU64,
}

impl FakeClock {
    /// A fake clock at time zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(duration_nanos(d), Ordering::AcqRel);
    }

    /// The current time in nanoseconds (same as [`Clock::now`], without importing the trait).
    pub fn now_nanos(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Sets the time; never moves it backwards (a smaller value is ignored).
    pub fn set(&self, t: Nanos) {
        self.now.fetch_max(t.0, Ordering::AcqRel);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        Nanos(self.now.load(Ordering::Acquire))
    }
}
