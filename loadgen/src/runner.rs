//! Running a scenario: worker threads, the interval-log writer, the progress line, and the files
//! a run leaves behind (summary.json, one `.hgrm` per histogram, intervals.hlog, percentiles.svg).
//!
//! scenario → events → per-worker histograms and counters → merged once at the end → printers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::histograms::{Histograms, Metric, Unit};
use crate::progress::Progress;
use crate::source::{SourcePicker, Sources};
use crate::stats::{totals, Live, Totals};
use crate::summary::{Files, Summary, FORMAT};
use crate::target::Url;
use crate::worker::{self, Scenario, WorkerConfig};
use crate::{hgrm, hlog, plot};

/// The plot's file name.
pub const PLOT: &str = "percentiles.svg";

/// What every scenario run needs besides its scenario.
pub struct RunPlan {
    pub scenario: &'static str,
    pub url: Url,
    pub duration: Duration,
    pub stall_timeout: Duration,
    pub workers: usize,
    pub sources: Sources,
    pub out: PathBuf,
    pub progress: bool,
    pub config: serde_json::Value,
    pub verification: String,
    pub processes: u64,
    /// TLS client setup (`https://` targets).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Worker threads for `items` loops or users: `--workers` (`asked`) or one per core, at least
/// one and no more than there are items.
pub fn workers_for(asked: Option<usize>, items: usize) -> usize {
    asked.unwrap_or_else(default_workers).clamp(1, items.max(1))
}

/// The default results directory: `results/<scenario>-<UTC timestamp>`.
pub fn default_out(scenario: &str) -> PathBuf {
    let ts = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    PathBuf::from("results").join(format!("{scenario}-{ts}"))
}

/// Worker threads to use when not told: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resolve the target; an empty list makes every connection attempt a `dns` error.
pub fn resolve(url: &Url) -> Vec<std::net::SocketAddr> {
    match url.resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "weir-load: cannot resolve {}: {e} (counted as dns errors)",
                url.host
            );
            Vec::new()
        }
    }
}

/// Run `make(i)` on each of `plan.workers` threads until the duration ends, then write the
/// results. Returns the summary (already written) and the directory.
pub fn execute<S, F>(plan: RunPlan, make: F) -> anyhow::Result<(Summary, PathBuf)>
where
    S: Scenario + Send + 'static,
    F: Fn(usize) -> S,
{
    let _ = crate::sys::raise_nofile_limit();
    std::fs::create_dir_all(&plan.out)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", plan.out.display()))?;
    let targets: Arc<[std::net::SocketAddr]> = resolve(&plan.url).into();
    if let (Some(tls), Some(addr)) = (&plan.tls, targets.first()) {
        // An untrusted certificate fails every connection the same way: say so once, clearly.
        crate::tls::check(tls, *addr, plan.stall_timeout)?;
    }
    let workers = plan.workers.max(1);
    let start_sys = SystemTime::now();
    let start = Instant::now();
    let cfg = WorkerConfig {
        targets,
        stall_timeout: plan.stall_timeout,
        start,
        deadline: start + plan.duration,
        tls: plan.tls.clone(),
    };

    let (tx, rx) = std::sync::mpsc::channel();
    let hlog_path = plan.out.join(hlog::FILE);
    let comment = format!("weir-load {} {}", plan.scenario, plan.url);
    let hlog_thread = {
        let path = hlog_path.clone();
        std::thread::Builder::new()
            .name("weir-load-hlog".into())
            .spawn(move || hlog::write_log(&path, start_sys, workers, rx, &comment))?
    };

    let lives: Vec<Arc<Live>> = (0..workers).map(|_| Arc::new(Live::default())).collect();
    let mut handles = Vec::with_capacity(workers);
    for (i, live) in lives.iter().enumerate() {
        let scenario = make(i);
        let cfg = cfg.clone();
        let picker = SourcePicker::new(&plan.sources, i);
        let live = live.clone();
        let tx = tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("weir-load-{i}"))
                .spawn(move || worker::run(cfg, picker, live, scenario, Some(tx)))?,
        );
    }
    drop(tx);

    let mut progress = Progress::new(plan.duration, plan.progress);
    let mut max_open = 0u64;
    while handles.iter().any(|h| !h.is_finished()) {
        let left = cfg.deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.clamp(Duration::from_millis(5), Duration::from_millis(250)));
        let t = totals(lives.iter().map(|l| l.as_ref()));
        max_open = max_open.max(t.open);
        progress.update(start.elapsed(), &t);
    }
    progress.finish();

    let mut hists = Histograms::default();
    let mut ended = start;
    for h in handles {
        let out = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        hists.merge(&out.hists);
        ended = ended.max(out.ended);
    }
    let elapsed = ended.duration_since(start);
    hlog_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the interval log writer panicked"))??;
    let t = totals(lives.iter().map(|l| l.as_ref()));
    max_open = max_open.max(t.open);

    let summary = build_summary(
        &plan,
        start_sys,
        elapsed,
        &t,
        max_open,
        workers as u64,
        &hists,
    );
    write_outputs(&plan.out, &summary, &hists)?;
    let summary = Summary::read(&plan.out)?;
    Ok((summary, plan.out))
}

/// The summary of a run from its merged counters and histograms.
pub fn build_summary(
    plan: &RunPlan,
    started: SystemTime,
    elapsed: Duration,
    t: &Totals,
    max_open: u64,
    workers: u64,
    hists: &Histograms,
) -> Summary {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut s = Summary {
        format: FORMAT.to_string(),
        weir_load_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: plan.scenario.to_string(),
        target: plan.url.to_string(),
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        duration_s: secs,
        processes: plan.processes,
        workers,
        config: plan.config.clone(),
        bytes: t.bytes,
        useful_bytes: t.useful,
        downloads_completed: t.completed,
        downloads_verified: t.verified,
        downloads_incomplete: t.incomplete,
        requests: t.requests,
        responses: t.responses,
        requests_per_sec: t.requests as f64 / secs,
        goodput_bytes_per_sec: t.useful as f64 / secs,
        verification: plan.verification.clone(),
        hash_mismatches: 0,
        errors: t.errors.clone(),
        errors_total: 0,
        connections_opened: t.opened,
        max_open_connections: max_open,
        source_addresses: plan.sources.len() as u64,
        arrivals_queued: t.queued,
        tls_handshakes: t.tls_handshakes,
        tls_handshake_mean_us: if t.tls_handshakes > 0 {
            t.tls_handshake_us as f64 / t.tls_handshakes as f64
        } else {
            0.0
        },
        histograms: Default::default(),
        files: Files::default(),
    };
    s.set_histograms(hists);
    s
}

/// Write summary.json, the `.hgrm` files and the plot (the `.hlog` is written while running).
pub fn write_outputs(dir: &Path, summary: &Summary, hists: &Histograms) -> anyhow::Result<()> {
    let mut summary = summary.clone();
    let mut series = Vec::new();
    for (m, h) in hists.non_empty() {
        let (scale, _) = m.unit().display();
        let name = format!("{}.hgrm", m.name());
        std::fs::write(dir.join(&name), hgrm::render(h, scale))?;
        summary.files.hgrm.insert(m.name().to_string(), name);
        if m.unit() == Unit::Micros && m != Metric::StallGap {
            series.push(plot::Series {
                label: m.name().to_string(),
                points: plot::points(h, scale),
            });
        }
    }
    if let Some(h) = Some(hists.get(Metric::StallGap)).filter(|h| !h.is_empty()) {
        series.push(plot::Series {
            label: Metric::StallGap.name().to_string(),
            points: plot::points(h, 1000.0),
        });
    }
    summary.files.hlog = hlog::FILE.to_string();
    let title = format!(
        "{} {} ({:.0} s)",
        summary.scenario, summary.target, summary.duration_s
    );
    if !series.is_empty() {
        plot::draw(&dir.join(PLOT), &title, "ms", &series)?;
        summary.files.plot = PLOT.to_string();
    }
    summary.write(dir)?;
    Ok(())
}
