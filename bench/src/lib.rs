//! weir-bench: whole-system benchmarks of weir against nginx on the same files, in one run,
//! with the results written as data under `results/<date>-<name>/`.
//!
//! What it is for: the numbers issue 2 asks for (throughput and CPU per GiB on a 1 GiB file
//! with `axel -n 40` and with clients that are not the bottleneck, requests/s on a 4 KiB file,
//! and the memory of 10,000 idle and 10,000 stalled connections), each run N times per server
//! with the servers alternating, and reported as medians with weir/nginx ratios. What it is not
//! for: micro-benchmarks of functions (criterion, beside each crate) or the load generator's
//! own scenarios (`weir-load`).
//!
//! Subcommands: `first` (weir vs nginx), `before-after` (two weir binaries, the first the
//! baseline), `overhead` (accounting on/off), `loadgen` (weir-load vs wrk and axel), `shaping`
//! (shaping accuracy), `send-path` (the kernel's send paths, no server), `chaos` (SIGKILL during
//! resumed downloads: lost, duplicated and false completions), `tls` (weir's own HTTPS against
//! nginx with ssl) and `report` (the tables of the stored results).
//!
//! Layout: [`servers`] is the only place a server is started (its own session, stopped by
//! PID); [`runner`] runs scenarios N times per target with the targets alternating;
//! [`scenarios`] drive one client load against one started server and return an
//! [`scenarios::Outcome`]; [`procfs`] reads CPU and memory; [`report`] writes every run's
//! `summary.json` and README; [`results`] renders the stored ones again. [`run`] raises
//! RLIMIT_NOFILE once for everything started below it. Only PIDs this process started are ever
//! signalled.
//!
//! ```
//! // Medians are what the summary reports; a run that failed is not among the values.
//! assert_eq!(weir_bench::util::median(&[0.9, 0.7, 0.8]), Some(0.8));
//! ```
pub mod before_after;
pub mod chaos;
pub mod child;
pub mod cli;
pub mod client;
pub mod fixture;
pub mod loadgen_bench;
pub mod machine;
pub mod overhead;
pub mod procfs;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenarios;
pub mod send_path;
pub mod servers;
pub mod shaping;
pub mod tls_bench;
pub mod util;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use cli::{Cli, Command as Sub, FirstArgs};
use scenarios::{Plan, Scenario};

pub fn run(cli: Cli) -> Result<()> {
    // The one place RLIMIT_NOFILE is raised: every scenario, server and client tool this
    // process starts inherits it (held connections and 8,000-connection clients need it).
    if !matches!(cli.command, Sub::Report(_)) {
        util::raise_nofile()?;
    }
    match cli.command {
        Sub::First(a) => first(a),
        Sub::Overhead(a) => overhead::run(a),
        Sub::Loadgen(a) => loadgen_bench::run(a),
        Sub::Shaping(a) => shaping::run(a),
        Sub::SendPath(a) => send_path::run(a),
        Sub::BeforeAfter(a) => before_after::run(a),
        Sub::Chaos(a) => chaos::run(a),
        Sub::Tls(a) => tls_bench::run(a),
        Sub::Report(a) => results::run(a),
    }
}

/// The workspace this harness was built from (weir is built and versioned from here).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn shell_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut c = Command::new(&args[0]);
    c.args(&args[1..]);
    child::render(&c)
}

fn need(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{tool}` not found on PATH (apt-get install -y nginx-light axel aria2 wrk curl)");
    }
    Ok(())
}

/// `results/<date>-<name>[-quick][-N]`: a new directory under the workspace's results/.
pub fn out_dir(given: &Option<PathBuf>, name: &str, quick: bool) -> Result<PathBuf> {
    if let Some(o) = given {
        if o.exists() && std::fs::read_dir(o)?.next().is_some() {
            bail!("{} exists and is not empty", o.display());
        }
        return Ok(o.clone());
    }
    let base = format!(
        "{}-{name}{}",
        util::utc_date(),
        if quick { "-quick" } else { "" }
    );
    let results = workspace_root().join("results");
    for i in 1.. {
        let name = if i == 1 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let p = results.join(name);
        if !p.exists() {
            return Ok(p);
        }
    }
    unreachable!()
}

/// The weir binary to measure: `given`, or target/release/weir (built first unless `no_build`).
pub fn weir_binary(given: &Option<PathBuf>, no_build: bool) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let ws = workspace_root();
    if !no_build {
        eprintln!("weir-bench: cargo build --release -p weir");
        let st = Command::new("cargo")
            .args(["build", "--release", "-p", "weir"])
            .current_dir(&ws)
            .status()
            .context("running cargo")?;
        if !st.success() {
            bail!("cargo build --release -p weir failed ({st})");
        }
    }
    Ok(ws.join("target/release/weir"))
}

fn first(a: FirstArgs) -> Result<()> {
    let plan = Plan {
        runs: if a.quick && a.runs == 3 {
            1
        } else {
            a.runs.max(1)
        },
        big_bytes: a.big_mib.unwrap_or(if a.quick { 256 } else { 1024 }) << 20,
        wrk_seconds: a.wrk_seconds.unwrap_or(if a.quick { 3 } else { 10 }),
        conns: a.conns.unwrap_or(if a.quick { 1000 } else { 10_000 }),
    };
    let chosen: Vec<Scenario> = scenarios::ALL
        .iter()
        .copied()
        .filter(|s| a.only.is_empty() || a.only.contains(s))
        .collect();
    runner::check_tools(&chosen, true)?;
    let bin = weir_binary(&a.weir_bin, a.no_build)?;
    let m = runner::measure(runner::Spec {
        bench: "first",
        title: "First benchmark: weir vs nginx (issue 2)".to_owned(),
        out: out_dir(&a.out, "first", a.quick)?,
        work_dir: a.work_dir.clone(),
        plan,
        scenarios: chosen,
        builds: vec![(String::new(), bin)],
        drivers: a.weir_driver.clone(),
        with_nginx: true,
        baseline: "nginx".to_owned(),
        weir_args: a.weir_args.clone(),
        axel_dir: a.axel_dir.clone(),
    })?;
    report::write_run(&m.out, &m.summary, &m.nginx_conf, &m.raw_files)
}
