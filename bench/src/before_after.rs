//! Before/after: two (or more) weir binaries in one run, to show that a change altered no
//! behaviour. The same fixture, the same runner and the same report as `first`, with the
//! first binary as the baseline instead of nginx: full speed (the 1 GiB file over 40
//! connections, as 40 ranged curls and as `wrk -c40`), 4 KiB requests/s (`wrk -c100`), and a
//! reduced shaping-accuracy run (per-user ratio p1/p50/p99, Jain, global ratio) per binary.
//! Binaries alternate run by run; the README reports medians and the after/before ratios.
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;

use crate::runner::{self, alternate};
use crate::scenarios::{Plan, Scenario};
use crate::shaping;

/// `weir-bench before-after` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A weir binary as NAME=PATH, repeatable; the first is the baseline
    /// (e.g. --weir-bin before=/tmp/weir-main --weir-bin after=target/release/weir)
    #[arg(long = "weir-bin", value_name = "NAME=PATH", value_parser = parse_build, required = true)]
    pub builds: Vec<(String, PathBuf)>,
    /// Measured runs per scenario and binary (binaries alternate; medians are reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A small smoke run: 64 MiB file, 2 s wrk, 10 users x 4 connections for 2 s of shaping
    #[arg(long)]
    pub quick: bool,
    /// Result directory [default: results/DATE-structure-before-after]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Scratch directory [default: a new temp dir under /tmp]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// weir's I/O driver
    #[arg(long, default_value = "uring")]
    pub driver: String,
    /// Size of the big file in MiB [default: 1024, 64 with --quick]
    #[arg(long, value_name = "MiB")]
    pub big_mib: Option<u64>,
    /// Seconds per wrk run [default: 10, 2 with --quick]
    #[arg(long, value_name = "S")]
    pub wrk_seconds: Option<u64>,
    /// Shaping: users [default: 50, 10 with --quick]
    #[arg(long)]
    pub shaping_users: Option<usize>,
    /// Shaping: connections per user [default: 20, 4 with --quick]
    #[arg(long)]
    pub shaping_conns: Option<usize>,
    /// Shaping: measurement window in seconds [default: 10, 2 with --quick]
    #[arg(long)]
    pub shaping_window_s: Option<u64>,
    /// Shaping scenarios (see `weir-bench shaping --help`); empty skips shaping
    #[arg(long, value_delimiter = ',', default_value = "uring-a,uring-b")]
    pub shaping_scenarios: Vec<String>,
}

fn parse_build(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("{name:?}: a build name is letters, digits and '-'"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

pub fn run(mut a: Args) -> Result<()> {
    // `--shaping-scenarios ''` parses as one empty name: it means "skip shaping".
    a.shaping_scenarios.retain(|s| !s.is_empty());
    if a.builds.len() < 2 {
        bail!("give at least two --weir-bin NAME=PATH");
    }
    let q = |quick: u64, full: u64| if a.quick { quick } else { full };
    let plan = Plan {
        runs: a.runs.max(1),
        big_bytes: a.big_mib.unwrap_or(q(64, 1024)) << 20,
        wrk_seconds: a.wrk_seconds.unwrap_or(q(2, 10)),
        conns: 0,
    };
    let baseline = a.builds[0].0.clone();
    let target = |b: &str| {
        crate::servers::Target::Weir {
            build: b.to_owned(),
            driver: a.driver.clone(),
        }
        .name()
    };
    let mut m = runner::measure(runner::Spec {
        bench: "before-after",
        title: format!(
            "Before/after: {} (baseline {baseline})",
            a.builds
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        ),
        out: crate::out_dir(&a.out, "structure-before-after", a.quick)?,
        work_dir: a.work_dir.clone(),
        plan,
        scenarios: vec![Scenario::CurlRanges, Scenario::WrkBig, Scenario::Wrk4k],
        builds: a.builds.clone(),
        drivers: vec![a.driver.clone()],
        with_nginx: false,
        baseline: target(&baseline),
        weir_args: Vec::new(),
        axel_dir: PathBuf::from("/dev/shm"),
    })?;

    if !a.shaping_scenarios.is_empty() {
        let mut prepared = Vec::new();
        for (name, bin) in &a.builds {
            let mut args = shaping::Args {
                weir: bin.clone(),
                nginx: PathBuf::from("nginx"), // not started: weir scenarios only
                work_dir: m.work.join(format!("shaping-{name}")),
                out: m.out.join("raw"),
                scenarios: a.shaping_scenarios.join(","),
                users: a.shaping_users.unwrap_or(q(10, 50) as usize),
                conns: a.shaping_conns.unwrap_or(q(4, 20) as usize),
                user_kib: 256,
                global_mib: 0,
                file_mib: q(16, 64),
                settle_s: q(1, 3),
                window_s: a.shaping_window_s.unwrap_or(q(2, 10)),
                workers: crate::servers::WORKERS,
            };
            // (b) binds: the global cap is half of what the users would take.
            args.global_mib = ((args.users as u64 * args.user_kib) / 2048).max(1);
            let p = shaping::prepare(&args)?;
            prepared.push((name.clone(), args, p));
        }
        let mut runs = Vec::new();
        for run in 1..=a.runs.max(1) {
            for (name, args, p) in alternate(&prepared, run) {
                for sc in &a.shaping_scenarios {
                    let r = shaping::measure(args, p, sc)?;
                    std::fs::write(
                        m.out.join(format!("raw/shaping-{sc}-{name}-run{run}.json")),
                        serde_json::to_string_pretty(&r)?,
                    )?;
                    let mut b = shaping::brief(r);
                    b["build"] = json!(name);
                    b["run"] = json!(run);
                    runs.push(b);
                }
            }
        }
        let (_, first_args, _) = &prepared[0];
        m.summary.shaping = Some(shaping::Comparison {
            builds: a.builds.iter().map(|(n, _)| n.clone()).collect(),
            size: format!(
                "Shaping, reduced: {} users × {} connections at {} KiB/s each, (b) with a global cap of half their sum ({} MiB/s); {} s settle, {} s window; medians of {} runs per build.",
                first_args.users,
                first_args.conns,
                first_args.user_kib,
                first_args.global_mib,
                first_args.settle_s,
                first_args.window_s,
                a.runs.max(1)
            ),
            scenarios: a.shaping_scenarios.clone(),
            runs,
        });
    }
    m.summary.finished_utc = crate::util::utc_timestamp();
    crate::report::write_run(&m.out, &m.summary, &m.nginx_conf, &m.raw_files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_name_equals_path() {
        assert_eq!(
            parse_build("before=/tmp/weir").unwrap(),
            ("before".to_owned(), PathBuf::from("/tmp/weir"))
        );
        assert!(parse_build("/tmp/weir").is_err());
        assert!(parse_build("a b=/x").is_err());
    }
}
