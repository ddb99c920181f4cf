//! The interval log (`intervals.hlog`, HdrHistogram's standard interval log with compressed V2
//! payloads, written by [`IntervalLogWriter`]): one histogram per metric per second, tagged with
//! the metric name, so a run can be replayed over time and merged exactly
//! (`--processes` sums the children's logs).
//!
//! Workers send one [`IntervalReport`] per second; [`IntervalSink`] merges the workers' reports of
//! the same second and writes them once all workers have reported it (or at the end).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;

use crate::histograms::{Histograms, IntervalLogWriter, Metric};
use crate::worker::{IntervalReport, INTERVAL};

/// The file name inside a results directory.
pub const FILE: &str = "intervals.hlog";

/// Receive every worker's interval reports and write the log. Returns when all senders are gone.
pub fn write_log(
    path: &Path,
    start: SystemTime,
    workers: usize,
    rx: Receiver<IntervalReport>,
    comment: &str,
) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let comments = [
        comment,
        "Tags are weir-load metric names; values in us, goodput in bytes/s",
    ];
    let mut writer = IntervalLogWriter::begin(BufWriter::new(file), &comments, start)?;
    let mut pending: BTreeMap<u64, (usize, Histograms)> = BTreeMap::new();
    let mut write = |index: u64, h: &Histograms| -> std::io::Result<()> {
        for (m, hist) in h.non_empty() {
            writer.write(m, hist, INTERVAL * index as u32, INTERVAL)?;
        }
        Ok(())
    };
    for report in rx {
        let entry = pending
            .entry(report.index)
            .or_insert_with(|| (0, Histograms::default()));
        entry.0 += 1;
        entry.1.merge(&report.hists);
        // Flush every interval that all workers have reported, in order.
        while let Some((&idx, (n, _))) = pending.iter().next() {
            if *n < workers {
                break;
            }
            let (_, h) = pending.remove(&idx).expect("present");
            write(idx, &h)?;
        }
    }
    for (idx, (_, h)) in std::mem::take(&mut pending) {
        write(idx, &h)?;
    }
    writer.finish()?.flush()
}

/// Read a log back: the sum of every interval per metric (the run's whole histograms), and the
/// intervals' end offset (the run's measured length).
pub fn read_totals(path: &Path) -> anyhow::Result<(Histograms, Duration)> {
    let mut totals = Histograms::default();
    let mut end = Duration::ZERO;
    for_each_interval(path, |metric, start, length, h| {
        totals.merge_one(metric, &h);
        end = end.max(start + length);
    })?;
    Ok((totals, end))
}

/// Calls `each(metric, start offset, length, histogram)` for every interval of the log at `path`
/// whose tag names a metric.
fn for_each_interval(
    path: &Path,
    mut each: impl FnMut(Metric, Duration, Duration, hdrhistogram::Histogram<u64>),
) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        let LogEntry::Interval(ilh) = entry else {
            continue;
        };
        let Some(metric) = ilh.tag().and_then(|t| Metric::from_name(t.as_str())) else {
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD.decode(ilh.encoded_histogram())?;
        let h: hdrhistogram::Histogram<u64> = de
            .deserialize(&mut &raw[..])
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        each(metric, ilh.start_timestamp(), ilh.duration(), h);
    }
    Ok(())
}

/// Merge several interval logs (one per process of a `--processes` run) into one: intervals of
/// the same start and tag are added. Returns the merged whole-run histograms.
pub fn merge_logs(
    inputs: &[std::path::PathBuf],
    out: &Path,
    start: SystemTime,
    comment: &str,
) -> anyhow::Result<Histograms> {
    let mut by_interval: BTreeMap<(u128, Metric), hdrhistogram::Histogram<u64>> = BTreeMap::new();
    let mut totals = Histograms::default();
    for path in inputs {
        for_each_interval(path, |metric, start, _, h| {
            totals.merge_one(metric, &h);
            let slot = by_interval
                .entry((start.as_millis(), metric))
                .or_insert_with(crate::histograms::new_histogram);
            let _ = slot.add(&h);
        })?;
    }
    let file = std::fs::File::create(out)?;
    let comments = [comment, "Merged from the interval logs of every process"];
    let mut writer = IntervalLogWriter::begin(BufWriter::new(file), &comments, start)?;
    for ((ms, metric), h) in &by_interval {
        writer.write(*metric, h, Duration::from_millis(*ms as u64), INTERVAL)?;
    }
    writer.finish()?.flush()?;
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_sums_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (tx, rx) = std::sync::mpsc::channel();
        for (worker, index) in [(0, 0u64), (1, 0), (0, 1), (1, 1), (0, 2)] {
            let mut h = Histograms::default();
            h.record(Metric::Connect, 100 + worker * 10 + index);
            if index == 2 {
                h.record(Metric::Goodput, 5_000_000);
            }
            tx.send(IntervalReport { index, hists: h }).unwrap();
        }
        drop(tx);
        write_log(&path, SystemTime::now(), 2, rx, "test").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("Tag=connect,"));
        assert!(text.contains("#[BaseTime:"));
        let (totals, end) = read_totals(&path).unwrap();
        assert_eq!(totals.get(Metric::Connect).len(), 5);
        assert_eq!(totals.get(Metric::Goodput).len(), 1);
        assert_eq!(end, Duration::from_secs(3));
    }
}
