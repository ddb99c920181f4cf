//! weir-load's interval log opens in HdrHistogram's own tools: Python's `hdrhistogram` (PyPI,
//! an independent implementation; CI installs it) reads `intervals.hlog` back and sums each
//! tag's intervals, and gets what weir-load reported for that metric from its own whole-run
//! histogram: the `.hgrm`'s total count, max and (value, cumulative count) rows, and
//! summary.json's min and percentiles.
//!
//! (The `.hgrm` rows themselves are not compared line by line: Python's percentile iterator
//! steps through other percentiles than Java's and Rust's, 0.19, 0.271, ... instead of 0.2, 0.3.
//! Every value both tables list must have the same cumulative count, and every row of one must be
//! consistent with the other's.)

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::{content, summary, weir_load_bin, Nginx};

/// Reads an interval log with `hdrh.log.HistogramLogReader`, adds every interval of a tag into
/// one histogram and prints one JSON object: per tag, its count, min, max, percentiles (raw
/// units, from its recorded values) and its percentile distribution rows as (value in display units, cumulative count).
const READER: &str = r##"
import io, json, math, sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

# The value at quantile q as HdrHistogram's Java and Rust implementations define it: the
# highest value equivalent to the recorded value at which the cumulative count first reaches
# ceil(q * total). (hdrh's own get_value_at_percentile rounds the count instead.)
def at(h, q):
    want = max(1, math.ceil(q * h.get_total_count()))
    seen = 0
    for it in h.get_recorded_iterator():
        seen += it.count_at_value_iterated_to
        if seen >= want:
            return h.get_highest_equivalent_value(it.value_iterated_to)

reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 2, 3))
totals = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    tag = h.get_tag()
    if tag not in totals:
        totals[tag] = HdrHistogram(1, 1 << 50, 3)
    totals[tag].add(h)
out = {}
for tag, h in totals.items():
    table = io.BytesIO()
    h.output_percentile_distribution(table, 1e6 if tag == "goodput" else 1e3)
    rows = []
    for line in table.getvalue().decode().splitlines():
        f = line.split()
        if len(f) >= 3 and not line.startswith("#") and f[0] != "Value":
            rows.append([f[0], int(f[2])])
    out[tag] = {
        "count": h.get_total_count(),
        "min": h.get_min_value(),
        "max": h.get_max_value(),
        "p50": at(h, 0.5),
        "p90": at(h, 0.9),
        "p99": at(h, 0.99),
        "p99_9": at(h, 0.999),
        "rows": rows,
    }
print(json.dumps(out))
"##;

/// The (value, cumulative count) rows of an `.hgrm` text, and its footer's `Max` and total
/// count.
fn hgrm_rows(hgrm: &str) -> (Vec<(f64, u64)>, f64, u64) {
    let rows = hgrm
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("Percentile"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect();
    let footer = hgrm
        .lines()
        .find(|l| l.starts_with("#[Max"))
        .expect("a #[Max footer");
    let nums: Vec<f64> = footer
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    (rows, nums[0], nums[1] as u64)
}

/// Python's reading of the log at `hlog`, per tag.
fn python_read(hlog: &Path) -> serde_json::Map<String, Value> {
    let out = Command::new("python3")
        .args(["-c", READER])
        .arg(hlog)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python hdrhistogram reader failed (pip install hdrhistogram; CI installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("the reader prints JSON") {
        Value::Object(m) => m,
        v => panic!("not an object: {v}"),
    }
}

/// Two percentile tables of the same distribution agree: a value listed in both has the same
/// cumulative count, and counts grow with values across both.
fn consistent(tag: &str, a: &[(f64, u64)], b: &[(f64, u64)]) {
    for &(va, ca) in a {
        for &(vb, cb) in b {
            let ok = if va == vb {
                ca == cb
            } else if va < vb {
                ca <= cb
            } else {
                ca >= cb
            };
            assert!(ok, "{tag}: rows ({va}, {ca}) and ({vb}, {cb}) disagree");
        }
    }
}

#[test]
fn python_hdrhistogram_reads_the_interval_log_like_weir_load() {
    let small = content(4096, 7);
    let ngx = Nginx::start(&[("f4k", &small)], "");
    let dir = ngx.out("hlog");
    let st = weir_load_bin()
        .args(["rate", &ngx.url("f4k"), "--rate", "300", "--ramp", "0s"])
        .args(["--duration", "3s", "--max-users", "20", "--seed", "3"])
        .args(["--workers", "2", "--no-progress", "--out"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let hlog = dir.join("intervals.hlog");
    let text = std::fs::read_to_string(&hlog).unwrap();
    assert!(
        text.contains("#[Histogram log format version 1.3]"),
        "{text}"
    );
    let tags = python_read(&hlog);
    for want in ["latency", "latency_uncorrected", "ttfb", "download"] {
        assert!(tags.contains_key(want), "no {want} intervals: {tags:?}");
    }
    let sum = summary(&dir);
    for (tag, py) in &tags {
        let hgrm = std::fs::read_to_string(dir.join(format!("{tag}.hgrm")))
            .unwrap_or_else(|e| panic!("{tag}.hgrm: {e}"));
        let (rows, max, count) = hgrm_rows(&hgrm);
        assert!(count > 0, "{tag}: nothing recorded");
        assert_eq!(py["count"].as_u64(), Some(count), "{tag}: total count");
        let scale = if tag == "goodput" { 1e6 } else { 1e3 };
        let py_max = py["max"].as_f64().unwrap() / scale;
        assert!(
            (py_max - max).abs() < 0.0005,
            "{tag}: max {py_max} vs {max}"
        );
        let py_rows: Vec<(f64, u64)> = py["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().parse().unwrap(),
                    r[1].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(py_rows.len() > 1 && rows.len() > 1);
        consistent(tag, &rows, &py_rows);
        let ours = &sum["histograms"][tag];
        for k in ["count", "min", "max", "p50", "p90", "p99", "p99_9"] {
            assert_eq!(py[k], ours[k], "{tag}: {k}");
        }
    }
}
