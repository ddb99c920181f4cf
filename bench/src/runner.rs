//! The one runner every server-against-server scenario goes through: it prepares the fixture
//! and each server once, warms the page cache, then runs every scenario N times per target
//! with the targets alternating run by run (odd runs in the listed order, even runs reversed),
//! each run on a freshly started server, and keeps one raw JSON per run. The medians and
//! ratios are [`report::summarize`]'s; the files are [`report::write_run`]'s.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report::{self, RunRecord, Summary};
use crate::scenarios::{self, Ctx, Outcome, Plan, Scenario};
use crate::servers::{nginx::NginxSetup, weir::WeirSetup, Running, Setup, Target};
use crate::{client, fixture, machine, procfs, util};

/// What one invocation compares.
pub struct Spec {
    /// Short name (`first`, `before-after`): the summary's `bench` field.
    pub bench: &'static str,
    pub title: String,
    pub out: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub plan: Plan,
    pub scenarios: Vec<Scenario>,
    /// weir binaries by build name (`""` when there is one).
    pub builds: Vec<(String, PathBuf)>,
    pub drivers: Vec<String>,
    pub with_nginx: bool,
    /// The target the others are divided by.
    pub baseline: String,
    pub weir_args: Vec<String>,
    pub axel_dir: PathBuf,
}

/// A finished measurement: the summary (not yet written) and where it goes.
pub struct Measured {
    pub summary: Summary,
    pub out: PathBuf,
    pub work: PathBuf,
    pub raw_files: Vec<String>,
    pub nginx_conf: String,
    /// Removes the scratch directory when dropped (unless `--work-dir` was given).
    _tmp: Option<tempfile::TempDir>,
}

/// The tools a scenario needs on PATH.
pub fn check_tools(scenarios: &[Scenario], with_nginx: bool) -> Result<()> {
    if with_nginx {
        crate::need("nginx")?;
    }
    for s in scenarios {
        match s {
            Scenario::Axel => crate::need("axel")?,
            Scenario::CurlRanges => crate::need("curl")?,
            Scenario::WrkBig | Scenario::Wrk4k => crate::need("wrk")?,
            _ => {}
        }
    }
    Ok(())
}

/// A scratch directory: the given one, or a new temporary one removed at the end.
pub fn scratch(dir: &Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    })
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

/// Runs `spec` and returns the summary; nothing is written but the raw files.
pub fn measure(spec: Spec) -> Result<Measured> {
    let plan = spec.plan.clone();
    let mut targets: Vec<Target> = Vec::new();
    for (build, _) in &spec.builds {
        for d in &spec.drivers {
            targets.push(Target::Weir {
                build: build.clone(),
                driver: d.clone(),
            });
        }
    }
    if spec.with_nginx {
        targets.push(Target::Nginx);
    }
    let target_names: Vec<String> = targets.iter().map(Target::name).collect();
    check_tools(&spec.scenarios, spec.with_nginx)?;
    let nofile = util::nofile_limit();
    if spec
        .scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Idle | Scenario::Stalled))
        && (nofile as usize) < plan.conns + 100
    {
        bail!(
            "RLIMIT_NOFILE hard limit {nofile} is too low for {} held connections",
            plan.conns
        );
    }
    for (_, bin) in &spec.builds {
        if !bin.is_file() {
            bail!(
                "{} does not exist (build it or pass --weir-bin)",
                bin.display()
            );
        }
    }

    let out = spec.out.clone();
    let raw_dir = out.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let (work, tmp) = scratch(&spec.work_dir)?;
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
    let first_bin = spec
        .builds
        .first()
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    let versions = machine::Versions::collect(&crate::workspace_root(), &first_bin);

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

    let mut weir = BTreeMap::new();
    let mut weir_builds = BTreeMap::new();
    for (build, bin) in &spec.builds {
        let dir = if build.is_empty() {
            work.join("weir-data")
        } else {
            work.join(format!("weir-data-{build}"))
        };
        weir.insert(
            build.clone(),
            WeirSetup::create(bin, &dir, &fx, spec.weir_args.clone())?,
        );
        if !build.is_empty() {
            weir_builds.insert(
                build.clone(),
                format!(
                    "`{}` ({})",
                    bin.display(),
                    util::command_output(&bin.to_string_lossy(), &["--version"])
                ),
            );
        }
    }
    let setup = Setup {
        fixture: fx.clone(),
        weir,
        nginx: NginxSetup::create(&work, &fx.root)?,
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
        axel_dir: spec.axel_dir.clone(),
        wrk_script,
    };
    let total = spec.scenarios.len() * plan.runs * targets.len();
    let mut done = 0;
    let mut records = Vec::new();
    for &s in &spec.scenarios {
        for run in 1..=plan.runs {
            for t in alternate(&targets, run) {
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
    for f in [&fx.big, &fx.small] {
        fixture_sha256.insert(format!("{} ({} bytes)", f.id, f.len), f.sha256.clone());
    }
    let weir_setup_commands = setup
        .weir
        .values()
        .flat_map(|w| w.setup_commands.iter().cloned())
        .collect();
    let summary = Summary {
        bench: spec.bench.to_owned(),
        title: spec.title.clone(),
        command: crate::shell_line(),
        started_utc,
        finished_utc: util::utc_timestamp(),
        plan: plan.clone(),
        targets: target_names.clone(),
        baseline: spec.baseline.clone(),
        machine,
        versions,
        load_before,
        load_after: procfs::loadavg(),
        fixture_sha256,
        weir_builds,
        weir_setup_commands,
        server_commands,
        scenarios: spec
            .scenarios
            .iter()
            .map(|&s| report::summarize(s, &target_names, &spec.baseline, &records))
            .collect(),
        shaping: None,
    };
    let nginx_conf = std::fs::read_to_string(log_dir.join("nginx.conf")).unwrap_or_default();
    Ok(Measured {
        summary,
        out,
        work,
        raw_files: records.iter().map(RunRecord::file_name).collect(),
        nginx_conf,
        _tmp: tmp,
    })
}

/// The order of the targets in run `run` (1-based): as given on odd runs, reversed on even
/// ones, so that drift on a shared machine hits every target alike.
pub fn alternate<T>(targets: &[T], run: usize) -> Vec<&T> {
    if run % 2 == 1 {
        targets.iter().collect()
    } else {
        targets.iter().rev().collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_alternate_run_by_run() {
        let t = ["a", "b", "c"];
        assert_eq!(alternate(&t, 1), [&"a", &"b", &"c"]);
        assert_eq!(alternate(&t, 2), [&"c", &"b", &"a"]);
        assert_eq!(alternate(&t, 3), [&"a", &"b", &"c"]);
    }
}
