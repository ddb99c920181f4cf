//! The percentile plot (SVG): value against percentile on HdrHistogram's classic log axis
//! (x = 1/(1-percentile), labelled 90%, 99%, 99.9% ...), one line per histogram and run.

use std::path::Path;

use plotters::prelude::*;

/// One line of the plot: label and (quantile, value in display units) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Highest x drawn: the 99.9999th percentile.
const X_MAX: f64 = 1e6;

fn x_of(q: f64) -> f64 {
    if q >= 1.0 {
        X_MAX
    } else {
        (1.0 / (1.0 - q)).min(X_MAX)
    }
}

fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p <= 0.0 {
        "0%".to_string()
    } else {
        let s = format!("{p:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}%")
    }
}

/// Points of a histogram in display units (quantile iteration, 5 ticks per half distance).
pub fn points(h: &hdrhistogram::Histogram<u64>, scale: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / scale,
            )
        })
        .collect()
}

/// Draw `series` into an SVG at `path`.
pub fn draw(path: &Path, title: &str, y_label: &str, series: &[Series]) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(q, v)| (x_of(q), v)))
        .collect();
    let x_hi = all.iter().map(|p| p.0).fold(10.0f64, f64::max) * 1.5;
    let y_lo = all
        .iter()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let y_lo = if y_lo.is_finite() { y_lo / 2.0 } else { 0.001 };
    let y_hi = all.iter().map(|p| p.1).fold(y_lo * 10.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(y_label)
        .x_label_formatter(&percentile_label)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .map(|&(q, v)| (x_of(q), v.max(y_lo)))
                    .collect::<Vec<_>>(),
                color.stroke_width(2),
            ))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_svg() {
        assert_eq!(percentile_label(&1.0), "0%");
        assert_eq!(percentile_label(&100.0), "99%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
        let mut h = crate::histograms::new_histogram();
        for v in 1..1000u64 {
            h.record(v * 10).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.svg");
        draw(
            &p,
            "t",
            "ms",
            &[Series {
                label: "connect".into(),
                points: points(&h, 1000.0),
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("connect"));
    }
}
