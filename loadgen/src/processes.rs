//! `--processes N`: one run spread over N processes of weir-load (each with its own open-files
//! limit), and merged into one result.
//!
//! The parent re-runs its own executable N times with the same arguments plus a hidden
//! `--child I/N` and `--out DIR/proc-I`. Child I takes every Nth user (or loop, or 1/N of the
//! rate) and every Nth source address. When all children are done the parent sums their
//! counters and rebuilds the exact merged histograms from their interval logs.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Common;
use crate::runner::RunPlan;
use crate::source::Sources;
use crate::target::Url;

/// This process's share of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// The whole run.
    pub const ALL: Share = Share { index: 0, count: 1 };

    /// From the hidden `--child I/N` flag.
    pub fn from_common(c: &Common) -> anyhow::Result<Share> {
        let Some(spec) = &c.child else {
            return Ok(Share::ALL);
        };
        let (i, n) = spec
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("--child wants I/N"))?;
        let (index, count): (usize, usize) = (i.parse()?, n.parse()?);
        anyhow::ensure!(
            count >= 1 && index < count,
            "--child {spec}: I must be below N"
        );
        Ok(Share { index, count })
    }

    /// Does this share own global item `g` (a user, a loop)?
    pub fn owns(&self, g: usize) -> bool {
        g % self.count == self.index
    }

    /// How many of `total` items this share owns.
    pub fn count_of(&self, total: usize) -> usize {
        (0..total).filter(|g| self.owns(*g)).count()
    }

    /// This share's source addresses.
    pub fn sources(&self, c: &Common) -> anyhow::Result<Sources> {
        Ok(match &c.source {
            Some(s) => Sources::parse(s)?.share(self.index, self.count),
            None => Sources::default(),
        })
    }

    /// A plan for this share of a `scenario` run, with the settings every scenario takes
    /// (`common`); the scenario fills in `config` and `verification`.
    pub fn plan(
        &self,
        scenario: &'static str,
        url: Url,
        duration: Duration,
        workers: usize,
        common: &Common,
        sources: Sources,
    ) -> RunPlan {
        RunPlan {
            scenario,
            url,
            duration,
            stall_timeout: common.stall_timeout,
            workers,
            sources,
            out: self.out_dir(common, scenario),
            progress: !common.no_progress,
            config: serde_json::Value::Null,
            verification: "off".to_string(),
            processes: 1,
            tls: None,
        }
    }

    /// The results directory of this process.
    pub fn out_dir(&self, c: &Common, scenario: &str) -> PathBuf {
        c.out
            .clone()
            .unwrap_or_else(|| crate::runner::default_out(scenario))
    }
}

/// Run a scenario in this process, or fan it out over `--processes` children and merge.
pub fn dispatch(
    common: &Common,
    scenario: &'static str,
    run: impl FnOnce() -> anyhow::Result<(crate::summary::Summary, PathBuf)>,
) -> anyhow::Result<std::process::ExitCode> {
    let (summary, dir) = if common.processes > 1 && common.child.is_none() {
        fan_out(common, scenario)?
    } else {
        run()?
    };
    if common.child.is_none() {
        print!("{}", summary.render());
        println!("  results: {}", dir.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// This command line without `--out`, `--processes`, `--no-progress` (the children get their
/// own).
fn child_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--out" || a == "--processes" {
            args.next();
        } else if a == "--no-progress" || a.starts_with("--out=") || a.starts_with("--processes=") {
        } else {
            out.push(a);
        }
    }
    out
}

fn fan_out(
    common: &Common,
    scenario: &'static str,
) -> anyhow::Result<(crate::summary::Summary, PathBuf)> {
    use crate::summary::Summary;
    let n = common.processes;
    let out = Share::ALL.out_dir(common, scenario);
    std::fs::create_dir_all(&out)?;
    let exe = std::env::current_exe()?;
    let started = std::time::SystemTime::now();
    let t0 = std::time::Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        let dir = out.join(format!("proc-{i}"));
        let child = std::process::Command::new(&exe)
            .args(child_args())
            .arg("--child")
            .arg(format!("{i}/{n}"))
            .arg("--out")
            .arg(&dir)
            .arg("--no-progress")
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting child {i}: {e}"))?;
        children.push((child, dir));
    }
    eprintln!(
        "weir-load: {n} processes running, results merge into {}",
        out.display()
    );
    let mut parts = Vec::new();
    for (mut child, dir) in children {
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "child process for {} failed: {status}",
            dir.display()
        );
        parts.push((Summary::read(&dir)?, dir));
    }
    let elapsed = t0.elapsed();
    let hlogs: Vec<PathBuf> = parts
        .iter()
        .map(|(_, d)| d.join(crate::hlog::FILE))
        .collect();
    let comment = format!("weir-load {scenario} over {n} processes");
    let hists = crate::hlog::merge_logs(&hlogs, &out.join(crate::hlog::FILE), started, &comment)?;
    let mut merged = parts[0].0.clone();
    merged.started_at = humantime::format_rfc3339_seconds(started).to_string();
    merged.processes = n as u64;
    merged.duration_s = parts
        .iter()
        .map(|(s, _)| s.duration_s)
        .fold(0.0, f64::max)
        .min(elapsed.as_secs_f64());
    merged.workers = parts.iter().map(|(s, _)| s.workers).sum();
    macro_rules! sum {
        ($($f:ident),*) => { $( merged.$f = parts.iter().map(|(s, _)| s.$f).sum(); )* };
    }
    sum!(
        bytes,
        useful_bytes,
        downloads_completed,
        downloads_verified,
        downloads_incomplete,
        requests,
        responses,
        connections_opened,
        max_open_connections,
        source_addresses,
        arrivals_queued,
        tls_handshakes
    );
    if merged.tls_handshakes > 0 {
        let weighted: f64 = parts
            .iter()
            .map(|(s, _)| s.tls_handshake_mean_us * s.tls_handshakes as f64)
            .sum();
        merged.tls_handshake_mean_us = weighted / merged.tls_handshakes as f64;
    }
    merged.errors = Default::default();
    for (s, _) in &parts {
        merged.errors.merge(&s.errors);
    }
    if parts.iter().any(|(s, _)| s.verification == "unavailable") {
        merged.verification = "unavailable".to_string();
    }
    let secs = merged.duration_s.max(1e-9);
    merged.requests_per_sec = merged.requests as f64 / secs;
    merged.goodput_bytes_per_sec = merged.useful_bytes as f64 / secs;
    merged.set_histograms(&hists);
    merged.files = Default::default();
    crate::runner::write_outputs(&out, &merged, &hists)?;
    Ok((Summary::read(&out)?, out))
}
