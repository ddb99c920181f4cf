//! What a worker shares with the admin listener: its counters and histograms for `/metrics`
//! (only that worker writes them, with relaxed atomics, so counting costs no contention; summed
//! when the admin listener is asked), its live downloads for `GET /downloads` (published about
//! once a second, never per byte), and the admin's requests to cut a user's connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::accesslog::LiveDownload;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// A latency histogram one thread writes (relaxed atomics) and `/metrics` reads.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket of [`BUCKETS`], not cumulative; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Prometheus histogram series `name{labels,le=...}`, `_sum` and `_count`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}\n"
            ));
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{braces} {sum}\n{name}_count{braces} {cum}\n"
        ));
    }
}

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
    /// Bytes of finished responses the client's TCP acknowledged (see [`crate::accesslog`]).
    pub bytes_acked: AtomicU64,
    /// Time each event-loop iteration spent working (from its wake-up to its end).
    pub loop_latency: Histogram,
    /// Time requests waited for the auth pool.
    pub auth_latency: Histogram,
    /// The worker's loop runs (set when it starts, cleared when it ends).
    pub running: AtomicBool,
    /// Live downloads, as the worker last published them.
    pub downloads: Mutex<Vec<LiveDownload>>,
    /// Users whose connections the admin API asked this worker to cut; `cut_pending` says
    /// there are some (read on every wake-up, so it is an atomic).
    pub cut: Mutex<Vec<Arc<str>>>,
    pub cut_pending: AtomicBool,
}

impl WorkerStats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        let _ = self;
        counter.fetch_add(n, Relaxed);
    }

    /// Ask the worker to cut `user`'s connections (it must be woken afterwards).
    pub fn request_cut(&self, user: &str) {
        lock(&self.cut).push(Arc::from(user));
        self.cut_pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The users to cut, if any were asked for since the last call.
    pub fn take_cuts(&self) -> Vec<Arc<str>> {
        if !self
            .cut_pending
            .swap(false, std::sync::atomic::Ordering::Acquire)
        {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.cut))
    }

    /// Replace the published live downloads.
    pub fn publish(&self, live: Vec<LiveDownload>) {
        *lock(&self.downloads) = live;
    }

    /// The published live downloads.
    pub fn live(&self) -> Vec<LiveDownload> {
        lock(&self.downloads).clone()
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
    metric(
        &mut out,
        "weir_bytes_acknowledged_total",
        "counter",
        "Bytes of finished responses (head and body) the clients' TCP acknowledged.",
        sum(&|w| &w.bytes_acked),
    );
    out.push_str("# HELP weir_worker_loop_seconds Time an event-loop iteration spent working, per worker.\n# TYPE weir_worker_loop_seconds histogram\n");
    for (i, w) in workers.iter().enumerate() {
        w.loop_latency.render(
            &mut out,
            "weir_worker_loop_seconds",
            &format!("worker=\"{i}\""),
        );
    }
    out.push_str("# HELP weir_auth_wait_seconds Time requests waited for the auth pool.\n# TYPE weir_auth_wait_seconds histogram\n");
    let all = Histogram::default();
    for w in workers {
        for (a, c) in all.counts.iter().zip(&w.auth_latency.counts) {
            a.fetch_add(c.load(Relaxed), Relaxed);
        }
        all.sum_nanos
            .fetch_add(w.auth_latency.sum_nanos.load(Relaxed), Relaxed);
    }
    all.render(&mut out, "weir_auth_wait_seconds", "");
    for (name, help, value) in extra {
        // Counters end in `_total` (Prometheus naming); the rest are gauges.
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        metric(&mut out, name, kind, help, *value);
    }
    out
}

/// A metric family with labelled samples (`labels` written `key="value",...`).
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub samples: Vec<(String, f64)>,
}

/// Prometheus text of `families`.
pub fn render_families(out: &mut String, families: &[Family]) {
    for f in families {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {}\n",
            f.name, f.help, f.name, f.kind
        ));
        for (labels, v) in &f.samples {
            if labels.is_empty() {
                out.push_str(&format!("{} {v}\n", f.name));
            } else {
                out.push_str(&format!("{}{{{labels}}} {v}\n", f.name));
            }
        }
    }
}

/// A label value, escaped for the text format.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `weir_build_info` and `weir_driver_info`: the version, and the driver with its features
/// (`features`: the driver's `key=value` list) as labels of gauges worth 1.
pub fn info_families(driver: &str, features: &str) -> Vec<Family> {
    let mut labels = format!("driver=\"{}\"", label(driver));
    for kv in features.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            labels.push_str(&format!(",{k}=\"{}\"", label(v)));
        }
    }
    vec![
        Family {
            name: "weir_build_info",
            kind: "gauge",
            help: "The running weir's version (value 1).",
            samples: vec![(
                format!(
                    "version=\"{}\",debug_assertions=\"{}\"",
                    env!("CARGO_PKG_VERSION"),
                    cfg!(debug_assertions)
                ),
                1.0,
            )],
        },
        Family {
            name: "weir_driver_info",
            kind: "gauge",
            help: "The I/O driver the workers run and its features (value 1).",
            samples: vec![(labels, 1.0)],
        },
    ]
}

/// The shaper's state per rate class (`default` for users' own classes, else the signed
/// link's class name) and in all: connections, connections waiting for tokens (the backlog),
/// bytes granted, and the granted rate since the previous call (`prev`: its time and totals).
pub fn shaper_families(
    shaper: &weir_shaper::Shaper,
    prev: &Mutex<Option<(std::time::Instant, std::collections::BTreeMap<String, u64>)>>,
) -> Vec<Family> {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Agg {
        conns: u64,
        backlog: u64,
        granted: u64,
    }
    let mut classes: BTreeMap<String, Agg> = BTreeMap::new();
    for c in shaper.classes() {
        let class = c.name.split_once('/').map_or("default", |(_, n)| n);
        let a = classes.entry(class.to_string()).or_default();
        a.conns += u64::from(c.stats.active_connections);
        a.backlog += c.backlogged;
        a.granted += c.stats.bytes_granted;
    }
    let total = Agg {
        conns: classes.values().map(|a| a.conns).sum(),
        backlog: classes.values().map(|a| a.backlog).sum(),
        granted: classes.values().map(|a| a.granted).sum(),
    };
    let now = std::time::Instant::now();
    let mut totals: BTreeMap<String, u64> = classes
        .iter()
        .map(|(k, a)| (k.clone(), a.granted))
        .collect();
    totals.insert(String::new(), total.granted);
    let mut prev = lock(prev);
    let rate = |key: &str, granted: u64| -> f64 {
        match prev.as_ref() {
            Some((at, before)) => {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                let was = before.get(key).copied().unwrap_or(0);
                if secs > 0.0 {
                    granted.saturating_sub(was) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    };
    let per = |f: &dyn Fn(&Agg) -> f64| -> Vec<(String, f64)> {
        classes
            .iter()
            .map(|(k, a)| (format!("class=\"{}\"", label(k)), f(a)))
            .collect()
    };
    let class_rates: Vec<(String, f64)> = classes
        .iter()
        .map(|(k, a)| (format!("class=\"{}\"", label(k)), rate(k, a.granted)))
        .collect();
    let global_rate = rate("", total.granted);
    *prev = Some((now, totals));
    let one = |v: f64| vec![(String::new(), v)];
    let limit = shaper.global_rate().bytes_per_sec().unwrap_or(0) as f64;
    vec![
        Family {
            name: "weir_shaper_connections",
            kind: "gauge",
            help: "Shaped connections open, per rate class.",
            samples: per(&|a| a.conns as f64),
        },
        Family {
            name: "weir_shaper_backlog_connections",
            kind: "gauge",
            help: "Connections waiting for the shaper's tokens, per rate class.",
            samples: per(&|a| a.backlog as f64),
        },
        Family {
            name: "weir_shaper_granted_bytes_total",
            kind: "counter",
            help: "Bytes the shaper granted, per rate class.",
            samples: per(&|a| a.granted as f64),
        },
        Family {
            name: "weir_shaper_granted_rate_bytes_per_second",
            kind: "gauge",
            help: "Bytes per second the shaper granted since the previous scrape, per rate class.",
            samples: class_rates,
        },
        Family {
            name: "weir_shaper_global_backlog_connections",
            kind: "gauge",
            help: "Connections waiting for the shaper's tokens, in all.",
            samples: one(total.backlog as f64),
        },
        Family {
            name: "weir_shaper_global_granted_bytes_total",
            kind: "counter",
            help: "Bytes the shaper granted, in all.",
            samples: one(total.granted as f64),
        },
        Family {
            name: "weir_shaper_global_granted_rate_bytes_per_second",
            kind: "gauge",
            help: "Bytes per second the shaper granted since the previous scrape, in all.",
            samples: one(global_rate),
        },
        Family {
            name: "weir_shaper_global_rate_limit_bytes_per_second",
            kind: "gauge",
            help: "The global rate in force (0: unlimited).",
            samples: one(limit),
        },
    ]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "worker=\"0\"");
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"0.00001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{worker=\"0\"} 3\n"), "{out}");
    }
}
