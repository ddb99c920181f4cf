//! Counters for `/metrics`: one set per worker (only that worker writes it, with relaxed
//! atomics, so counting costs no contention), summed when the admin listener is asked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters.
#[derive(Default)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub status: [AtomicU64; 4],
    pub timeouts: AtomicU64,
    pub refused_over_cap: AtomicU64,
    pub accept_backoffs: AtomicU64,
    pub send_errors: AtomicU64,
    pub bytes_credited: AtomicU64,
    /// TLS connections ended by a failed handshake or a bad record.
    pub tls_errors: AtomicU64,
}

impl WorkerStats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        let _ = self;
        counter.fetch_add(n, Relaxed);
    }

    pub fn response(&self, status: u16) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(c) = self.status.get((status / 100).saturating_sub(2) as usize) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// Prometheus text exposition of all workers' counters.
pub fn render(workers: &[std::sync::Arc<WorkerStats>], extra: &[(&str, &str, u64)]) -> String {
    let sum = |f: &dyn Fn(&WorkerStats) -> &AtomicU64| -> u64 {
        workers.iter().map(|w| f(w).load(Relaxed)).sum()
    };
    let mut out = String::new();
    let metric = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    let open = sum(&|w| &w.accepted).saturating_sub(sum(&|w| &w.closed));
    metric(
        &mut out,
        "weir_connections_open",
        "gauge",
        "Open client connections.",
        open,
    );
    metric(
        &mut out,
        "weir_connections_accepted_total",
        "counter",
        "Accepted connections.",
        sum(&|w| &w.accepted),
    );
    metric(
        &mut out,
        "weir_requests_total",
        "counter",
        "Responses started.",
        sum(&|w| &w.requests),
    );
    metric(
        &mut out,
        "weir_bytes_sent_total",
        "counter",
        "Bytes handed to the kernel.",
        sum(&|w| &w.bytes_sent),
    );
    metric(
        &mut out,
        "weir_bytes_credited_total",
        "counter",
        "Content bytes acknowledged by clients' TCP and credited to downloads.",
        sum(&|w| &w.bytes_credited),
    );
    metric(
        &mut out,
        "weir_timeouts_total",
        "counter",
        "Connections closed by a timeout.",
        sum(&|w| &w.timeouts),
    );
    metric(
        &mut out,
        "weir_refused_over_cap_total",
        "counter",
        "Connections answered 503 over the cap.",
        sum(&|w| &w.refused_over_cap),
    );
    metric(
        &mut out,
        "weir_accept_backoffs_total",
        "counter",
        "Accept pauses after EMFILE/ENFILE.",
        sum(&|w| &w.accept_backoffs),
    );
    metric(
        &mut out,
        "weir_send_errors_total",
        "counter",
        "Sends that failed (peer gone, file truncated).",
        sum(&|w| &w.send_errors),
    );
    metric(
        &mut out,
        "weir_tls_errors_total",
        "counter",
        "TLS connections ended by a failed handshake or a bad record.",
        sum(&|w| &w.tls_errors),
    );
    out.push_str("# HELP weir_responses_total Responses by status class.\n# TYPE weir_responses_total counter\n");
    for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let v: u64 = workers.iter().map(|w| w.status[i].load(Relaxed)).sum();
        out.push_str(&format!("weir_responses_total{{class=\"{class}\"}} {v}\n"));
    }
    for (name, help, value) in extra {
        metric(&mut out, name, "gauge", help, *value);
    }
    out
}
