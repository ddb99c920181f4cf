//! The completion counters, kept by the ledger thread and the webhook sender, read by metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for metrics; read them with relaxed loads, any time.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Purchases completed (history rows written) by this process.
    pub completions: AtomicU64,
    /// Credits received (each one range).
    pub credits: AtomicU64,
    /// Credits that did not count: item not in the cart, unknown part, database error.
    pub credits_ignored: AtomicU64,
    /// Bytes in the credits that counted (overlaps counted each time).
    pub bytes_credited: AtomicU64,
    /// Bytes that counted and were not covered before: actual progress.
    pub bytes_new: AtomicU64,
    /// Failed journal flushes and completion transactions (each retried).
    pub journal_errors: AtomicU64,
    /// Webhook events acknowledged with a 2xx.
    pub webhook_delivered: AtomicU64,
    /// Webhook attempts that failed (each retried later).
    pub webhook_failures: AtomicU64,
}

impl LedgerStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
