//! Reconnecting a connection slot (an urlopen loop, a forty range): at once after a clean close,
//! after a capped exponential back-off after a failure, and fired from the worker's tick; and
//! the retry budget ([`Streak`]): how long failures may go on with no progress in between before
//! a download is given up.

use std::time::{Duration, Instant};

/// Capped exponential back-off: `first`, doubled per failure at most `doublings` times, and
/// never more than `cap`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub doublings: u32,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row.
    pub fn after(&self, failures: u32) -> Duration {
        (self.first * (1u32 << failures.min(self.doublings))).min(self.cap)
    }
}

/// One slot's pending reconnect and its failures in a row.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retry {
    at: Option<Instant>,
    failures: u32,
}

impl Retry {
    /// The slot's connection ended: reconnect after the back-off if it `failed`, else at once.
    pub fn schedule(&mut self, now: Instant, failed: bool, backoff: &Backoff) {
        let delay = if failed {
            self.failures += 1;
            backoff.after(self.failures)
        } else {
            Duration::ZERO
        };
        self.at = Some(now + delay);
    }

    /// A request on the slot worked: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Whether a reconnect is scheduled (due or not).
    pub fn is_scheduled(&self) -> bool {
        self.at.is_some()
    }

    /// At a tick: true, and no longer scheduled, if the reconnect is due at `now`; a reconnect
    /// still ahead is counted in `pending`.
    pub fn take_due(&mut self, now: Instant, pending: &mut usize) -> bool {
        match self.at {
            Some(at) if at <= now => {
                self.at = None;
                true
            }
            Some(_) => {
                *pending += 1;
                false
            }
            None => false,
        }
    }
}

/// A run of failures with no progress in between, for a retry budget (`--retry-for`): the
/// download is given up once failures have gone on for longer than the budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streak {
    since: Option<Instant>,
}

impl Streak {
    /// A failure at `now`: starts the streak if none is running.
    pub fn failed(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// Progress (a response or body bytes): the streak ends.
    pub fn progressed(&mut self) {
        self.since = None;
    }

    /// Whether failures have gone on for longer than `budget` at `now` (never without one).
    pub fn exhausted(&self, now: Instant, budget: Option<Duration>) -> bool {
        match (self.since, budget) {
            (Some(since), Some(b)) => now.saturating_duration_since(since) > b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_is_exhausted_only_past_its_budget_and_progress_resets_it() {
        let t0 = Instant::now();
        let budget = Some(Duration::from_secs(60));
        let mut s = Streak::default();
        assert!(!s.exhausted(t0 + Duration::from_secs(3600), budget));
        s.failed(t0);
        // A later failure does not move the start.
        s.failed(t0 + Duration::from_secs(30));
        assert!(!s.exhausted(t0 + Duration::from_secs(60), budget));
        assert!(s.exhausted(t0 + Duration::from_secs(61), budget));
        assert!(
            !s.exhausted(t0 + Duration::from_secs(3600), None),
            "no budget: retry until the run ends"
        );
        s.progressed();
        assert!(!s.exhausted(t0 + Duration::from_secs(61), budget));
        s.failed(t0 + Duration::from_secs(100));
        assert!(!s.exhausted(t0 + Duration::from_secs(160), budget));
        assert!(s.exhausted(t0 + Duration::from_secs(161), budget));
    }

    #[test]
    fn failures_wait_longer_up_to_the_cap_and_a_success_starts_over() {
        let b = Backoff {
            first: Duration::from_millis(10),
            doublings: 7,
            cap: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=8).map(|f| b.after(f).as_millis()).collect();
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000]);

        let t0 = Instant::now();
        let mut r = Retry::default();
        let mut pending = 0;
        r.schedule(t0, true, &b);
        r.schedule(t0, true, &b);
        assert!(!r.take_due(t0 + Duration::from_millis(39), &mut pending));
        assert_eq!(pending, 1);
        assert!(r.take_due(t0 + Duration::from_millis(40), &mut pending));
        assert!(!r.is_scheduled());
        r.succeeded();
        r.schedule(t0, true, &b);
        assert!(r.take_due(t0 + Duration::from_millis(20), &mut pending));
        r.schedule(t0, false, &b);
        assert!(
            r.take_due(t0, &mut pending),
            "a clean close reconnects at once"
        );
    }
}
