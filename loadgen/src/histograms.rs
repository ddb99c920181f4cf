//! The measured quantities and their HdrHistograms.
//!
//! Each worker thread owns a [`Histograms`] for the whole run and one for the current interval; the
//! interval set goes to the `.hlog` writer every second, the run set is merged with the other
//! workers' once at the end. Nothing here is shared between threads while the run goes on.
//!
//! [`IntervalLogWriter`] writes those intervals in HdrHistogram's standard interval log format
//! (format version 1.3, as Java's `HistogramLogWriter` writes it): a version line, `StartTime`
//! and `BaseTime`, the legend, then one `Tag=<metric>,start,length,max,<payload>` line per
//! metric per interval, each payload the base64 of the zlib-compressed V2 encoding
//! (`HISTFAAA...`). So HdrHistogram's own readers open it: Java's `HistogramLogProcessor` and
//! `HistogramLogAnalyzer` (one series per tag), Python's `hdrhistogram`, and this crate's
//! `IntervalLogIterator`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

/// What a histogram measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// TCP connect (SYN to established), per connection.
    Connect,
    /// Request written to first response byte, per request.
    Ttfb,
    /// Gap between two reads that returned body bytes, per read.
    StallGap,
    /// A whole download (forty: size probe to last byte of the last range; urlopen/rate: one full
    /// response), per completed download.
    Download,
    /// Bytes per second of each completed download of a user.
    Goodput,
    /// Open model: intended start (the arrival) to last byte, corrected for coordinated omission.
    Latency,
    /// Open model: actual request start to last byte (what a closed-loop tool would report).
    LatencyUncorrected,
}

/// The unit of a metric's recorded values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Micros,
    BytesPerSec,
}

impl Unit {
    /// Name used in summary.json.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::BytesPerSec => "bytes_per_sec",
        }
    }

    /// Divisor from recorded values to the values printed in `.hgrm` files and plots
    /// (milliseconds, MB/s), and that unit's name.
    pub fn display(self) -> (f64, &'static str) {
        match self {
            Unit::Micros => (1_000.0, "ms"),
            Unit::BytesPerSec => (1_000_000.0, "MB/s"),
        }
    }
}

impl Metric {
    /// Every metric, in output order.
    pub const ALL: [Metric; 7] = [
        Metric::Connect,
        Metric::Ttfb,
        Metric::StallGap,
        Metric::Download,
        Metric::Goodput,
        Metric::Latency,
        Metric::LatencyUncorrected,
    ];

    /// Stable name: the summary key, the `.hgrm` file stem and the `.hlog` tag.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::Ttfb => "ttfb",
            Metric::StallGap => "stall_gap",
            Metric::Download => "download",
            Metric::Goodput => "goodput",
            Metric::Latency => "latency",
            Metric::LatencyUncorrected => "latency_uncorrected",
        }
    }

    /// The metric with this name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Unit of recorded values.
    pub fn unit(self) -> Unit {
        match self {
            Metric::Goodput => Unit::BytesPerSec,
            _ => Unit::Micros,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A fresh histogram: 3 significant digits, auto-resizing from 1 up.
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 2, 3).expect("static histogram bounds are valid");
    h.auto(true);
    h
}

/// One histogram per metric.
#[derive(Clone, Debug)]
pub struct Histograms {
    h: [Histogram<u64>; Metric::ALL.len()],
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            h: std::array::from_fn(|_| new_histogram()),
        }
    }
}

impl Histograms {
    /// Record a raw value.
    pub fn record(&mut self, metric: Metric, value: u64) {
        // `saturating_record` would clamp to the current (auto-growing) top; `record` grows.
        let h = &mut self.h[metric.index()];
        if h.record(value).is_err() {
            h.saturating_record(value);
        }
    }

    /// Record a duration in microseconds.
    pub fn record_duration(&mut self, metric: Metric, d: Duration) {
        self.record(metric, d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// The histogram of `metric`.
    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.h[metric.index()]
    }

    /// Replace the histogram of `metric`.
    pub fn set(&mut self, metric: Metric, h: Histogram<u64>) {
        self.h[metric.index()] = h;
    }

    /// Add every histogram of `other` into this set.
    pub fn merge(&mut self, other: &Histograms) {
        for m in Metric::ALL {
            self.merge_one(m, other.get(m));
        }
    }

    /// Add one histogram into the one for `metric`.
    pub fn merge_one(&mut self, metric: Metric, other: &Histogram<u64>) {
        // Auto-resizing histograms with equal precision always add.
        let _ = self.h[metric.index()].add(other);
    }

    /// Clear all counts (keeps the allocations).
    pub fn reset(&mut self) {
        for h in &mut self.h {
            h.reset();
        }
    }

    /// The metrics that recorded anything, with their histograms.
    pub fn non_empty(&self) -> impl Iterator<Item = (Metric, &Histogram<u64>)> {
        Metric::ALL
            .into_iter()
            .map(|m| (m, self.get(m)))
            .filter(|(_, h)| !h.is_empty())
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.non_empty().next().is_none()
    }
}

/// The log format version [`IntervalLogWriter`] writes (the Java implementation's current one).
pub const LOG_FORMAT_VERSION: &str = "1.3";

/// Writes a standard HdrHistogram interval log (see the module docs) to `W`.
pub struct IntervalLogWriter<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    encoded: Vec<u8>,
    line: String,
}

impl<W: Write> IntervalLogWriter<W> {
    /// Write the header: each of `comments` as a `#` line, the format version, `StartTime` and
    /// `BaseTime` (both `start`: interval timestamps are offsets from it) and the legend.
    pub fn begin(mut out: W, comments: &[&str], start: SystemTime) -> std::io::Result<Self> {
        for c in comments {
            for l in c.split('\n') {
                writeln!(out, "#{l}")?;
            }
        }
        let secs = start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        writeln!(out, "#[Histogram log format version {LOG_FORMAT_VERSION}]")?;
        writeln!(out, "#[StartTime: {secs:.3} (seconds since epoch)]")?;
        writeln!(out, "#[BaseTime: {secs:.3} (seconds since epoch)]")?;
        writeln!(
            out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        Ok(IntervalLogWriter {
            out,
            serializer: V2DeflateSerializer::new(),
            encoded: Vec::new(),
            line: String::new(),
        })
    }

    /// Write the histogram `h` of `metric` for the interval starting `start` after the log's
    /// start and lasting `length`. The max column is in recorded units (us, bytes/s).
    pub fn write(
        &mut self,
        metric: Metric,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
    ) -> std::io::Result<()> {
        self.encoded.clear();
        self.serializer
            .serialize(h, &mut self.encoded)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        self.line.clear();
        base64::engine::general_purpose::STANDARD.encode_string(&self.encoded, &mut self.line);
        writeln!(
            self.out,
            "Tag={},{:.3},{:.3},{:.1},{}",
            metric.name(),
            start.as_secs_f64(),
            length.as_secs_f64(),
            h.max() as f64,
            self.line
        )
    }

    /// Flush and hand back the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merge_reset() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        a.record_duration(Metric::Connect, Duration::from_micros(150));
        b.record_duration(Metric::Connect, Duration::from_secs(3));
        b.record(Metric::Goodput, 2_000_000_000);
        a.merge(&b);
        assert_eq!(a.get(Metric::Connect).len(), 2);
        assert!(a.get(Metric::Connect).max() >= 2_990_000);
        assert_eq!(a.non_empty().count(), 2);
        a.reset();
        assert!(a.is_empty());
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
    }
}
#[cfg(test)]
mod growth {
    use super::*;

    /// Regression: `saturating_record` clamped values to the auto-growing histogram's current
    /// top (2), so every percentile read 2 us.
    #[test]
    fn values_beyond_the_initial_top_are_kept() {
        let mut h = Histograms::default();
        for v in [150u64, 3_000_000, 2_000_000, 1_000_000] {
            h.record(Metric::Download, v);
        }
        let mut m = Histograms::default();
        m.merge(&h);
        let d = m.get(Metric::Download);
        assert!(d.value_at_quantile(0.5) >= 999_000);
        assert!(d.max() >= 2_999_000);
        assert_eq!(d.min(), 150);
    }
}

#[cfg(test)]
mod log {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    /// The log is in the standard form (header lines, compressed `HISTFAAA` payloads, tags) and
    /// reads back to the same histograms.
    #[test]
    fn standard_compressed_log_reads_back() {
        let mut h = Histograms::default();
        for v in [150u64, 3_000_000, 2_000_000, 1_000_000] {
            h.record(Metric::Download, v);
        }
        h.record(Metric::Goodput, 5_000_000);
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let mut w = IntervalLogWriter::begin(Vec::new(), &["weir-load test"], start).unwrap();
        for (m, hist) in h.non_empty() {
            w.write(m, hist, Duration::from_secs(2), Duration::from_secs(1))
                .unwrap();
        }
        let bytes = w.finish().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#weir-load test");
        assert_eq!(lines[1], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[2],
            "#[StartTime: 1700000000.250 (seconds since epoch)]"
        );
        assert_eq!(
            lines[3],
            "#[BaseTime: 1700000000.250 (seconds since epoch)]"
        );
        assert!(lines[4].starts_with("\"StartTimestamp\""));
        assert!(lines[5].starts_with("Tag=download,2.000,1.000,"));
        // The compressed V2 cookie (0x1c849314), base64: "HISTFAAA".
        assert!(lines[5].split(',').nth(4).unwrap().starts_with("HISTFAAA"));
        assert!(lines[6].starts_with("Tag=goodput,"));

        let mut de = Deserializer::new();
        let mut seen = 0;
        for e in IntervalLogIterator::new(&bytes) {
            let LogEntry::Interval(i) = e.unwrap() else {
                continue;
            };
            let m = Metric::from_name(i.tag().unwrap().as_str()).unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .unwrap();
            let back: Histogram<u64> = de.deserialize(&mut &raw[..]).unwrap();
            assert_eq!(&back, h.get(m));
            assert_eq!(i.start_timestamp(), Duration::from_secs(2));
            seen += 1;
        }
        assert_eq!(seen, 2);
    }
}
