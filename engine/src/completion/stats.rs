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
    /// 1 while the journal cannot be written (disk full, read-only): progress and completions
    /// wait in memory and are retried every flush.
    pub journal_failing: AtomicU64,
    /// Content bytes credited on start from the map files of a process that died.
    pub inflight_replayed: AtomicU64,
    /// Pending-evidence spans (written, not seen acknowledged when weir died) waiting.
    pub evidence_pending: AtomicU64,
    /// Bytes credited by the evidence rule (a resume starting inside a pending span).
    pub evidence_credited: AtomicU64,
    /// Bytes credited after a crash because the kernel's orphaned socket was acknowledged.
    pub orphan_credited: AtomicU64,
    /// Webhook events acknowledged with a 2xx.
    pub webhook_delivered: AtomicU64,
    /// Webhook attempts that failed (each retried later).
    pub webhook_failures: AtomicU64,
}

impl LedgerStats {
    /// The counters as (metric name, help, value), for `/metrics`.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "weir_completions_total",
                "Purchases completed by this process.",
                v(&self.completions),
            ),
            (
                "weir_ledger_bytes_new_total",
                "Content bytes newly credited.",
                v(&self.bytes_new),
            ),
            (
                "weir_journal_errors_total",
                "Failed journal writes (each retried).",
                v(&self.journal_errors),
            ),
            (
                "weir_journal_failing",
                "1 while the journal cannot be written (disk full): progress waits in memory.",
                v(&self.journal_failing),
            ),
            (
                "weir_inflight_replayed_bytes_total",
                "Bytes credited on start from map files of a killed process.",
                v(&self.inflight_replayed),
            ),
            (
                "weir_evidence_pending",
                "Spans written but unacknowledged when weir died, waiting for a resume.",
                v(&self.evidence_pending),
            ),
            (
                "weir_evidence_credited_bytes_total",
                "Bytes credited because a resume started inside a pending span.",
                v(&self.evidence_credited),
            ),
            (
                "weir_orphan_credited_bytes_total",
                "Bytes a killed process wrote that the kernel's orphaned sockets saw acknowledged.",
                v(&self.orphan_credited),
            ),
            (
                "weir_webhook_delivered_total",
                "Webhook events acknowledged.",
                v(&self.webhook_delivered),
            ),
            (
                "weir_webhook_failures_total",
                "Webhook attempts that failed.",
                v(&self.webhook_failures),
            ),
            (
                "weir_webhook_retries_total",
                "Webhook deliveries scheduled again (one per failed attempt).",
                v(&self.webhook_failures),
            ),
        ]
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
