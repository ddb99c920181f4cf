//! `.hgrm` files: HdrHistogram's standard percentile text ("Value Percentile TotalCount
//! 1/(1-Percentile)" and the `#[Mean ...]` footer), the format wrk2 and HdrHistogram's plotter
//! read. Values are written in display units (ms, MB/s), 5 ticks per half distance.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Render `h` with values divided by `scale`.
pub fn render(h: &Histogram<u64>, scale: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut count = 0u64;
        for v in h.iter_quantiles(5) {
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            count += v.count_since_last_iteration();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{:12.3} {:2.12} {:10} {:14.2}",
                    value,
                    q,
                    count,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{:12.3} {:2.12} {:10}", value, q, count);
            }
        }
    }
    let (buckets, sub_buckets) = layout(h);
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        buckets, sub_buckets
    );
    s
}

/// Buckets and sub-buckets as HdrHistogram counts them (sub-buckets: the smallest power of two
/// holding 2 × 10^sigfig).
fn layout(h: &Histogram<u64>) -> (u32, u64) {
    let largest = 2 * 10u64.pow(h.sigfig() as u32);
    let sub = largest.next_power_of_two();
    (h.buckets() as u32, sub)
}

/// One line of a parsed `.hgrm`: value (display units), percentile as a quantile in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub value: f64,
    pub quantile: f64,
    pub total_count: u64,
}

/// Parse the rows of an `.hgrm` file (header and footer lines are skipped).
pub fn parse(text: &str) -> Vec<Point> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let value = it.next()?.parse().ok()?;
            let quantile = it.next()?.parse().ok()?;
            let total_count = it.next()?.parse().ok()?;
            Some(Point {
                value,
                quantile,
                total_count,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_layout_round_trips() {
        let mut h = crate::histograms::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let text = render(&h, 1000.0);
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.contains("Value") && header.contains("1/(1-Percentile)"));
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("#[Buckets =") && text.contains("SubBuckets     =         2048]"));
        assert!(text.contains("Total count    =        10000]"));
        let pts = parse(&text);
        assert!(pts.len() > 50);
        let last = pts.last().unwrap();
        assert_eq!(last.quantile, 1.0);
        assert_eq!(last.total_count, 10_000);
        assert!((last.value - 10.0).abs() < 0.02);
        assert!(pts.windows(2).all(|w| w[0].quantile <= w[1].quantile));
    }
}
