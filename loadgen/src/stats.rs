//! Live counters of one worker: written by that worker only (relaxed atomics, no contention), read
//! by the progress line and summed into the summary at the end.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::errors::{ErrorCounters, ErrorCounts};

/// Counters one worker updates as it goes.
#[derive(Default)]
pub struct Live {
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// Requests written.
    pub requests: AtomicU64,
    /// Body bytes that went into a download (excludes probe bytes and bytes past a moved range
    /// end, and bodies of error responses).
    pub useful: AtomicU64,
    /// Response heads received.
    pub responses: AtomicU64,
    /// Downloads (forty) or full responses (urlopen, rate) completed.
    pub completed: AtomicU64,
    /// Completed downloads whose bytes were checked against --sha256 and matched.
    pub verified: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Most connections open at once.
    pub max_open: AtomicU64,
    /// Connections opened (attempted) in total.
    pub opened: AtomicU64,
    /// Users (forty) or arrivals in flight (rate) right now.
    pub active: AtomicU64,
    /// Downloads in flight when the run ended.
    pub incomplete: AtomicU64,
    /// Open model: arrivals that waited because --max-users were busy.
    pub queued: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// Their total time (TCP established to handshake done), microseconds.
    pub tls_handshake_us: AtomicU64,
    /// Errors by kind.
    pub errors: ErrorCounters,
}

/// A plain snapshot of one or many workers' [`Live`] counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub bytes: u64,
    pub useful: u64,
    pub requests: u64,
    pub responses: u64,
    pub completed: u64,
    pub verified: u64,
    pub open: u64,
    pub max_open: u64,
    pub opened: u64,
    pub active: u64,
    pub incomplete: u64,
    pub queued: u64,
    pub tls_handshakes: u64,
    pub tls_handshake_us: u64,
    pub errors: ErrorCounts,
}

impl Live {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One more open connection (tracks the maximum).
    pub fn conn_opened(&self) {
        Live::add(&self.opened, 1);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_open.fetch_max(now, Ordering::Relaxed);
    }

    /// One connection fewer.
    pub fn conn_closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Add this worker's counters into `t` (max_open adds too: workers peak independently, so
    /// the sum is an upper bound of the simultaneous total and exact when the load is steady).
    pub fn accumulate(&self, t: &mut Totals) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        t.bytes += g(&self.bytes);
        t.useful += g(&self.useful);
        t.requests += g(&self.requests);
        t.responses += g(&self.responses);
        t.completed += g(&self.completed);
        t.verified += g(&self.verified);
        t.open += g(&self.open);
        t.max_open += g(&self.max_open);
        t.opened += g(&self.opened);
        t.active += g(&self.active);
        t.incomplete += g(&self.incomplete);
        t.queued += g(&self.queued);
        t.tls_handshakes += g(&self.tls_handshakes);
        t.tls_handshake_us += g(&self.tls_handshake_us);
        self.errors.accumulate(&mut t.errors);
    }
}

/// Sum many workers' counters.
pub fn totals<'a>(lives: impl IntoIterator<Item = &'a Live>) -> Totals {
    let mut t = Totals::default();
    for l in lives {
        l.accumulate(&mut t);
    }
    t
}
