//! `compare A B [...]`: read stored results only (summary.json and the `.hgrm` files), print each
//! histogram's percentiles side by side with the ratio to the first run, and plot every run's
//! percentile curves in one SVG. A directory that is not a weir-load result is exit code 2.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::hgrm;
use crate::histograms::{Metric, Unit};
use crate::plot;
use crate::summary::Summary;

/// A loaded run: its directory and summary.
pub struct Run {
    pub dir: PathBuf,
    pub summary: Summary,
}

impl Run {
    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

fn ratio(base: f64, x: f64) -> String {
    if base == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}x", x / base)
    }
}

/// The side-by-side text for `runs` (the first is the baseline).
pub fn render(runs: &[Run]) -> String {
    let mut s = String::new();
    let w = runs
        .iter()
        .map(|r| r.name().len())
        .max()
        .unwrap_or(4)
        .max(8)
        + 2;
    let _ = writeln!(s, "runs:");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  [{}] {} — {} {} ({:.1} s)",
            i,
            r.dir.display(),
            r.summary.scenario,
            r.summary.target,
            r.summary.duration_s
        );
    }
    let _ = writeln!(s);
    type Row = (&'static str, fn(&Summary) -> f64);
    let rows: [Row; 5] = [
        ("goodput MB/s", |x| x.goodput_bytes_per_sec / 1e6),
        ("requests/s", |x| x.requests_per_sec),
        ("downloads completed", |x| x.downloads_completed as f64),
        ("downloads verified", |x| x.downloads_verified as f64),
        ("errors", |x| x.errors_total as f64),
    ];
    let w2 = w + 2;
    let _ = writeln!(s, "{:<w2$} {:>14} {:>10}", "throughput", "value", "ratio");
    for (label, f) in rows {
        let base = f(&runs[0].summary);
        let _ = writeln!(s, "  {label}");
        for r in runs {
            let v = f(&r.summary);
            let _ = writeln!(s, "  {:<w$} {:>14.1} {:>10}", r.name(), v, ratio(base, v));
        }
    }
    for m in Metric::ALL {
        let present: Vec<&Run> = runs
            .iter()
            .filter(|r| r.summary.histograms.contains_key(m.name()))
            .collect();
        if present.is_empty() {
            continue;
        }
        let (div, unit) = m.unit().display();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<w2$} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("{} ({unit})", m.name()),
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        );
        let base = runs[0].summary.histograms.get(m.name());
        for r in runs {
            let Some(h) = r.summary.histograms.get(m.name()) else {
                let _ = writeln!(s, "  {:<w$} (not recorded)", r.name());
                continue;
            };
            let mut line = format!("  {:<w$}", r.name());
            for (_, v) in h.columns() {
                let _ = write!(line, " {:>10.3}", v as f64 / div);
            }
            let _ = writeln!(s, "{line}");
            if let (Some(b), false) = (base, std::ptr::eq(r, &runs[0])) {
                let mut line = format!("  {:<w$}", "  ratio");
                for ((_, bv), (_, v)) in b.columns().iter().zip(h.columns()) {
                    let _ = write!(line, " {:>10}", ratio(*bv as f64, v as f64));
                }
                let _ = writeln!(s, "{line}");
            }
        }
    }
    s
}

/// Plot every run's time histograms from their `.hgrm` files.
pub fn draw(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for r in runs {
        for (name, file) in &r.summary.files.hgrm {
            let Some(m) = Metric::from_name(name) else {
                continue;
            };
            if m.unit() != Unit::Micros {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(r.dir.join(file)) else {
                continue;
            };
            let points = hgrm::parse(&text)
                .into_iter()
                .map(|p| (p.quantile, p.value))
                .collect();
            series.push(plot::Series {
                label: format!("{}: {name}", r.name()),
                points,
            });
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    plot::draw(path, "weir-load compare", "ms", &series)
}

/// `weir-load compare`.
pub fn command(args: &crate::cli::CompareArgs) -> anyhow::Result<ExitCode> {
    let mut runs = Vec::new();
    for dir in &args.dirs {
        match Summary::read(dir) {
            Ok(summary) => runs.push(Run {
                dir: dir.clone(),
                summary,
            }),
            Err(e) => {
                eprintln!("weir-load compare: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    print!("{}", render(&runs));
    draw(&runs, &args.plot)?;
    println!("\nplot: {}", args.plot.display());
    Ok(ExitCode::SUCCESS)
}
