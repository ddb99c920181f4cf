//! `summary.json`: the results of one run as data. Written by every scenario, read back by
//! `compare` and by `--processes` merging. Its shape is described by `summary.schema.json` at the
//! crate root, which a test checks real output against.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::errors::{ErrorCounts, ErrorKind};
use crate::histograms::{Histograms, Metric};

/// The value of the `format` key: how `compare` recognises a weir-load result.
pub const FORMAT: &str = "weir-load-summary/1";

/// The file name inside a results directory.
pub const FILE: &str = "summary.json";

/// Percentiles of one histogram, in the metric's unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    pub unit: String,
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl HistSummary {
    /// Summarise `h`, recorded in `metric`'s unit.
    pub fn of(metric: Metric, h: &Histogram<u64>) -> HistSummary {
        HistSummary {
            unit: metric.unit().name().to_string(),
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// The percentile columns `compare` prints, with their labels.
    pub fn columns(&self) -> [(&'static str, u64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("max", self.max),
        ]
    }
}

/// Paths of the other files of the run, relative to its directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Files {
    /// Metric name → `.hgrm` file.
    pub hgrm: BTreeMap<String, String>,
    pub hlog: String,
    pub plot: String,
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub format: String,
    pub weir_load_version: String,
    pub scenario: String,
    pub target: String,
    /// RFC 3339, UTC, seconds.
    pub started_at: String,
    pub duration_s: f64,
    pub processes: u64,
    pub workers: u64,
    /// The scenario's settings (users, connections, threads, rate, ...).
    pub config: serde_json::Value,
    /// Body bytes received.
    pub bytes: u64,
    /// Body bytes that counted toward a download.
    pub useful_bytes: u64,
    pub downloads_completed: u64,
    /// Completed downloads whose bytes matched --sha256.
    pub downloads_verified: u64,
    /// Downloads still in flight when the run ended.
    pub downloads_incomplete: u64,
    pub requests: u64,
    pub responses: u64,
    pub requests_per_sec: f64,
    /// useful_bytes / duration_s.
    pub goodput_bytes_per_sec: f64,
    /// `off`, `sha256`, or `unavailable` (the reference fetch failed).
    pub verification: String,
    pub hash_mismatches: u64,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    pub connections_opened: u64,
    /// Most connections open at once, sampled every 250 ms.
    pub max_open_connections: u64,
    pub source_addresses: u64,
    /// Open model: arrivals that waited for a free user slot.
    pub arrivals_queued: u64,
    /// TLS handshakes completed (0 for `http://`).
    #[serde(default)]
    pub tls_handshakes: u64,
    /// Their mean time, TCP established to handshake done, in microseconds (connect and ttfb
    /// exclude it: connect ends at TCP established, ttfb starts when the request is written).
    #[serde(default)]
    pub tls_handshake_mean_us: f64,
    /// Metric name → percentiles.
    pub histograms: BTreeMap<String, HistSummary>,
    pub files: Files,
}

/// Why a directory is not a weir-load result.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: no summary.json (not a weir-load result directory)")]
    Missing(String),
    #[error("{0}: summary.json is not a weir-load summary: {1}")]
    NotOurs(String, String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl Summary {
    /// Fill `histograms` from merged histograms.
    pub fn set_histograms(&mut self, hists: &Histograms) {
        self.histograms = hists
            .non_empty()
            .map(|(m, h)| (m.name().to_string(), HistSummary::of(m, h)))
            .collect();
        self.hash_mismatches = self.errors.get(ErrorKind::HashMismatch);
        self.errors_total = self.errors.total();
    }

    /// Write `summary.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(dir.join(FILE), text)
    }

    /// Read a results directory's `summary.json`, refusing anything that is not ours.
    pub fn read(dir: &Path) -> Result<Summary, LoadError> {
        let name = dir.display().to_string();
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Missing(name))
            }
            Err(e) => return Err(LoadError::Io(name, e)),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::NotOurs(name.clone(), e.to_string()))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(LoadError::NotOurs(
                    name,
                    format!("format {other:?}, expected {FORMAT:?}"),
                ))
            }
            None => return Err(LoadError::NotOurs(name, "no \"format\" key".into())),
        }
        serde_json::from_value(value).map_err(|e| LoadError::NotOurs(name, e.to_string()))
    }

    /// A short human report for the terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "{} against {}", self.scenario, self.target);
        let _ = writeln!(
            s,
            "  duration {:.1} s, {} process(es) x {} worker thread(s)",
            self.duration_s, self.processes, self.workers
        );
        let _ = writeln!(
            s,
            "  downloads completed {} (verified {}, {}), in flight at end {}",
            self.downloads_completed,
            self.downloads_verified,
            self.verification,
            self.downloads_incomplete
        );
        let _ = writeln!(
            s,
            "  requests {} ({:.0}/s), bytes {} ({:.1} MB/s goodput)",
            self.requests,
            self.requests_per_sec,
            self.bytes,
            self.goodput_bytes_per_sec / 1e6
        );
        let _ = writeln!(
            s,
            "  connections opened {}, most open at once {}",
            self.connections_opened, self.max_open_connections
        );
        if self.tls_handshakes > 0 {
            let _ = writeln!(
                s,
                "  TLS handshakes {}, mean {:.3} ms",
                self.tls_handshakes,
                self.tls_handshake_mean_us / 1000.0
            );
        }
        if self.errors_total == 0 {
            let _ = writeln!(s, "  errors: none");
        } else {
            let _ = writeln!(
                s,
                "  errors: {} ({})",
                self.errors_total,
                self.errors.short()
            );
        }
        let _ = writeln!(
            s,
            "  {:<20} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "histogram", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for m in Metric::ALL {
            if let Some(h) = self.histograms.get(m.name()) {
                let (div, unit) = m.unit().display();
                let f = |v: u64| format!("{:.3}", v as f64 / div);
                let _ = writeln!(
                    s,
                    "  {:<20} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    format!("{} ({unit})", m.name()),
                    h.count,
                    f(h.p50),
                    f(h.p90),
                    f(h.p99),
                    f(h.p99_9),
                    f(h.max)
                );
            }
        }
        s
    }
}
