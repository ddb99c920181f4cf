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
    /// How late an engine may come back for tokens without losing any: every bucket (the root
    /// and each user's, rate and ceil) is at least this much of its rate deep. With zero a
    /// bucket holds one refill period, so a connection woken later than that by a busy event
    /// loop loses the credit it would have used (in weir's 8,000-connection benchmark that was
    /// a steady 1.5% under the cap). It is a burst like `burst_bytes` and counts in the error
    /// bound the same way.
    pub late_slack: Duration,
    /// The wait handed to a connection opened with
    /// [`CoreShaper::open_tagged`](crate::CoreShaper::open_tagged) when it must wait. Such a
    /// connection is woken by the engine as soon as its chunk fills (see
    /// [`CoreShaper::poll`](crate::CoreShaper::poll)), so this is only a safety net: longer
    /// means fewer useless wake-ups (the wait is twice the expected fill time, at most this).
    /// Untagged connections wait at most 50 periods instead.
    pub notified_wait: Duration,
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
            late_slack: Duration::ZERO,
            notified_wait: Duration::from_secs(10),
        }
    }
}

impl ShaperConfig {
    pub(crate) fn period_nanos(&self) -> u64 {
        crate::clock::duration_nanos(self.refill_period).max(1_000)
    }

    /// Depth of a bucket filling at `rate` with extra depth `burst`: at least one period's
    /// worth and `late_slack`'s worth.
    pub(crate) fn depth(&self, burst: u64, rate: Rate) -> u64 {
        let slack = crate::clock::duration_nanos(self.late_slack);
        burst
            .max(bytes_in(rate, self.period_nanos()))
            .max(bytes_in(rate, slack))
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

impl ShaperConfig {
    /// A socket send buffer (the value to pass to `SO_SNDBUF`) sized to one shaped
    /// connection's share of its user's rate: what the connection may have in flight over
    /// `rtt`, or 40 ms of its share (four refill periods), whichever is more, at least one
    /// minimum grant (so a grant goes out in one send) and at most 4 MiB. `None` when
    /// unlimited: leave the kernel's autotuning alone.
    ///
    /// A shaped connection sends a grant at a time, so a larger buffer only holds more of a
    /// stalled client's bytes in kernel memory; a smaller one would cap the rate at
    /// buffer ÷ RTT. Linux doubles the value for its bookkeeping.
    ///
    /// ```
    /// use std::time::Duration;
    /// use weir_shaper::{Rate, ShaperConfig};
    /// let cfg = ShaperConfig::default(); // 4 KiB minimum grant
    /// let ms = Duration::from_millis;
    /// assert_eq!(cfg.sndbuf_for(Rate::Unlimited, ms(1)), None);
    /// // One of 40 connections of a 256 KiB/s user, on loopback: one minimum grant.
    /// assert_eq!(cfg.sndbuf_for(Rate::BytesPerSec(256 * 1024 / 40), ms(0)), Some(4096));
    /// // A 10 MB/s connection 100 ms away: its bandwidth-delay product, twice over.
    /// assert_eq!(cfg.sndbuf_for("10MB".parse().unwrap(), ms(100)), Some(2_000_000));
    /// ```
    pub fn sndbuf_for(&self, share: Rate, rtt: Duration) -> Option<u32> {
        let b = share.bytes_per_sec()?;
        let span = (2 * rtt).max(Duration::from_millis(40));
        let bytes = bytes_in(Rate::BytesPerSec(b), crate::clock::duration_nanos(span));
        let floor = self.min_grant_bytes.min(4 << 20);
        Some(bytes.clamp(floor, 4 << 20) as u32)
    }
}
