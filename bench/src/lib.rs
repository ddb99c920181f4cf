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
//! Layout: [`servers`] starts and stops weir and nginx and knows their PIDs; [`scenarios`]
//! drive one client load against one started server and return an [`scenarios::Outcome`];
//! [`procfs`] reads CPU and memory; [`report`] turns raw runs into `summary.json` and the
//! README. Only PIDs this process started are ever signalled.
//!
//! ```
//! // Medians are what the summary reports; a run that failed is not among the values.
//! assert_eq!(weir_bench::util::median(&[0.9, 0.7, 0.8]), Some(0.8));
//! ```
pub mod child;
pub mod cli;
pub mod client;
pub mod fixture;
pub mod loadgen_bench;
pub mod machine;
pub mod overhead;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod shaping;
pub mod util;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli::{Cli, Command as Sub, FirstArgs};
use report::{RunRecord, Summary};
use scenarios::{Ctx, Outcome, Plan, Scenario};
use servers::{Running, Setup, Target};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Sub::First(a) => first(a),
        Sub::Overhead(a) => overhead::run(a),
        Sub::Loadgen(a) => loadgen_bench::run(a),
        Sub::Shaping(a) => shaping::run(a),
    }
}

/// The workspace this harness was built from (weir is built and versioned from here).
fn workspace_root() -> PathBuf {
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

fn out_dir(a: &FirstArgs, ws: &Path) -> Result<PathBuf> {
    if let Some(o) = &a.out {
        if o.exists() && std::fs::read_dir(o)?.next().is_some() {
            bail!("{} exists and is not empty", o.display());
        }
        return Ok(o.clone());
    }
    let base = format!(
        "{}-first{}",
        util::utc_date(),
        if a.quick { "-quick" } else { "" }
    );
    let results = ws.join("results");
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

/// nginx's workers run as an unprivileged user when the master is root: they must be able
/// to read the fixture through every directory on its path.
fn open_up(paths: &[&Path]) -> Result<()> {
    for p in paths {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", p.display()))?;
    }
    Ok(())
}

/// After a start: warm what a steady-state server has warm (credential cache, file mappings)
/// so that the measured window does not include first-request work.
fn warm(srv: &Running, fx: &fixture::Fixture) -> Result<()> {
    let auth = srv.authorization.as_deref();
    let (st, _) = client::get(srv.addr, &srv.path(&fx.small.id), auth, None)?;
    anyhow::ensure!(
        st == 200,
        "{}: warm-up GET of the small file: {st}",
        srv.name
    );
    let (st, _) = client::get(srv.addr, &srv.path(&fx.big.id), auth, Some("0-0"))?;
    anyhow::ensure!(
        st == 206,
        "{}: warm-up range GET of the big file: {st}",
        srv.name
    );
    Ok(())
}

fn first(a: FirstArgs) -> Result<()> {
    let ws = workspace_root();
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
    let chosen: Vec<Scenario> = if a.only.is_empty() {
        scenarios::ALL.to_vec()
    } else {
        scenarios::ALL
            .iter()
            .copied()
            .filter(|s| a.only.contains(s))
            .collect()
    };
    let mut targets: Vec<Target> = a
        .weir_driver
        .iter()
        .map(|d| Target::Weir { driver: d.clone() })
        .collect();
    targets.push(Target::Nginx);
    let target_names: Vec<String> = targets.iter().map(Target::name).collect();

    need("nginx")?;
    for s in &chosen {
        match s {
            Scenario::Axel => need("axel")?,
            Scenario::CurlRanges => need("curl")?,
            Scenario::WrkBig | Scenario::Wrk4k => need("wrk")?,
            _ => {}
        }
    }
    let nofile = util::raise_nofile()?;
    if chosen
        .iter()
        .any(|s| matches!(s, Scenario::Idle | Scenario::Stalled))
        && (nofile as usize) < plan.conns + 100
    {
        bail!(
            "RLIMIT_NOFILE hard limit {nofile} is too low for {} held connections",
            plan.conns
        );
    }

    let weir_bin = match &a.weir_bin {
        Some(p) => p.clone(),
        None => {
            if !a.no_build {
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
            ws.join("target/release/weir")
        }
    };
    if !weir_bin.is_file() {
        bail!(
            "{} does not exist (build it or pass --weir-bin)",
            weir_bin.display()
        );
    }

    let out = out_dir(&a, &ws)?;
    let raw_dir = out.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let (work, _tmp_guard) = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let log_dir = work.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    eprintln!(
        "weir-bench: results in {}, scratch in {}",
        out.display(),
        work.display()
    );

    let started_utc = util::utc_timestamp();
    let load_before = procfs::loadavg();
    let machine = machine::Machine::collect(nofile);
    let versions = machine::Versions::collect(&ws, &weir_bin);

    eprintln!("weir-bench: writing fixture ({} bytes)", plan.big_bytes);
    let fx = fixture::Fixture::create(&work, plan.big_bytes)?;
    open_up(&[
        &work,
        &fx.root,
        &fx.root.join("d"),
        &fx.big.path,
        &fx.small.path,
    ])?;
    let wrk_script = work.join("summary.lua");
    std::fs::write(&wrk_script, scenarios::wrk::SCRIPT)?;
    open_up(&[&wrk_script])?;

    let weir_setup = servers::weir::WeirSetup::create(&weir_bin, &work, &fx, a.weir_args.clone())?;
    let nginx_setup = servers::nginx::NginxSetup::create(&work)?;
    let setup = Setup {
        fixture: fx.clone(),
        weir: weir_setup,
        nginx: nginx_setup,
        log_dir: log_dir.clone(),
    };

    // Page cache: one full read of the big file through each server before anything is timed.
    let mut server_commands = BTreeMap::new();
    for t in &targets {
        let srv = setup.start(t, &format!("warmup-{}", t.name()))?;
        let (st, len) = client::get(
            srv.addr,
            &srv.path(&fx.big.id),
            srv.authorization.as_deref(),
            None,
        )?;
        if st != 200 || len != fx.big.len {
            bail!(
                "{}: warm-up GET of the big file answered {st} with {len} bytes",
                t.name()
            );
        }
        server_commands.insert(t.name(), srv.command.clone());
        srv.stop(Duration::from_secs(15))?;
    }

    let ctx = Ctx {
        plan: &plan,
        fixture: &fx,
        axel_dir: a.axel_dir.clone(),
        wrk_script,
    };
    let total = chosen.len() * plan.runs * targets.len();
    let mut done = 0;
    let mut records = Vec::new();
    for &s in &chosen {
        for run in 1..=plan.runs {
            let order: Vec<&Target> = if run % 2 == 1 {
                targets.iter().collect()
            } else {
                targets.iter().rev().collect()
            };
            for t in order {
                done += 1;
                let rec = run_one(&setup, &ctx, s, t, run);
                eprintln!(
                    "[{done}/{total}] {} {} run {}: {}{}",
                    s.name(),
                    rec.target,
                    run,
                    if rec.ok() { "ok" } else { "FAILED" },
                    brief(&rec)
                );
                std::fs::write(
                    raw_dir.join(rec.file_name()),
                    serde_json::to_string_pretty(&rec)?,
                )?;
                records.push(rec);
            }
        }
    }

    let mut fixture_sha256 = BTreeMap::new();
    fixture_sha256.insert(
        format!("{} ({} bytes)", fx.big.id, fx.big.len),
        fx.big.sha256.clone(),
    );
    fixture_sha256.insert(
        format!("{} ({} bytes)", fx.small.id, fx.small.len),
        fx.small.sha256.clone(),
    );
    let summary = Summary {
        bench: "first",
        command: shell_line(),
        started_utc,
        finished_utc: util::utc_timestamp(),
        plan: plan.clone(),
        targets: target_names.clone(),
        machine,
        versions,
        load_before,
        load_after: procfs::loadavg(),
        fixture_sha256,
        weir_setup_commands: setup.weir.setup_commands.clone(),
        server_commands,
        scenarios: chosen
            .iter()
            .map(|&s| report::summarize(s, &target_names, &records))
            .collect(),
    };
    let nginx_conf = std::fs::read_to_string(log_dir.join("nginx.conf")).unwrap_or_default();
    std::fs::write(out.join("nginx.conf"), &nginx_conf)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let raw_files: Vec<String> = records.iter().map(RunRecord::file_name).collect();
    std::fs::write(
        out.join("README.md"),
        report::readme(&summary, &nginx_conf, &raw_files),
    )?;
    println!("{}", report::table(&summary));
    println!("written to {}", out.display());
    Ok(())
}

/// One line of the main metrics for the progress output.
fn brief(r: &RunRecord) -> String {
    if let Some(e) = &r.error {
        return format!(" ({e})");
    }
    let mut s = String::new();
    for (k, v) in &r.outcome.metrics {
        if k.ends_with("per_s")
            || k.ends_with("per_gib")
            || k.ends_with("per_conn")
            || k.contains("p99")
        {
            s.push_str(&format!(" {k}={v:.3}"));
        }
    }
    if !r.outcome.problems.is_empty() {
        s.push_str(&format!(" problems: {}", r.outcome.problems.join("; ")));
    }
    s
}

fn run_one(setup: &Setup, ctx: &Ctx, s: Scenario, t: &Target, run: usize) -> RunRecord {
    let label = format!("{}-{}-run{run}", s.name(), t.name());
    let mut rec = RunRecord {
        scenario: s.name(),
        target: t.name(),
        run,
        started_utc: util::utc_timestamp(),
        server_command: String::new(),
        server_exit: String::new(),
        load_before: procfs::loadavg(),
        load_after: String::new(),
        error: None,
        outcome: Outcome::default(),
    };
    let result = (|| -> Result<()> {
        let srv = setup.start(t, &label)?;
        rec.server_command = srv.command.clone();
        let measured = warm(&srv, ctx.fixture).and_then(|()| scenarios::run(s, ctx, &srv));
        rec.server_exit = srv.stop(Duration::from_secs(15))?;
        rec.outcome = measured?;
        Ok(())
    })();
    if let Err(e) = result {
        rec.error = Some(format!("{e:#}"));
    }
    rec.load_after = procfs::loadavg();
    rec
}
