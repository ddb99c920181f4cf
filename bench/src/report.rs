//! Results as data first: one raw JSON per run, a summary (medians and weir/nginx ratios)
//! computed only from those records, and the README rendered from the summary.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::machine::{Machine, Versions};
use crate::scenarios::{Goal, MetricDef, Outcome, Plan, Scenario};
use crate::util::median;

/// One measured run of one scenario against one server (the raw JSON file).
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub scenario: &'static str,
    pub target: String,
    pub run: usize,
    pub started_utc: String,
    pub server_command: String,
    pub server_exit: String,
    pub load_before: String,
    pub load_after: String,
    /// Set when the run failed before producing an outcome.
    pub error: Option<String>,
    pub outcome: Outcome,
}

impl RunRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.outcome.ok
    }

    pub fn file_name(&self) -> String {
        format!("{}-{}-run{}.json", self.scenario, self.target, self.run)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MetricSummary {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub goal: Option<Goal>,
    /// Per target: the values of the runs that succeeded, in run order.
    pub values: BTreeMap<String, Vec<f64>>,
    pub median: BTreeMap<String, f64>,
    /// Per target other than the baseline: its median / the baseline's median.
    #[serde(rename = "ratio_to_baseline", alias = "ratio_to_nginx")]
    pub ratio: BTreeMap<String, f64>,
    /// Per target other than the baseline: whether the goal holds on the medians (goals are
    /// stated against nginx, so only when nginx is the baseline).
    pub goal_met: BTreeMap<String, bool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub what: String,
    pub runs_ok: BTreeMap<String, usize>,
    pub runs_failed: BTreeMap<String, Vec<String>>,
    pub metrics: Vec<MetricSummary>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub bench: String,
    /// The README's title.
    #[serde(default)]
    pub title: String,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub plan: Plan,
    pub targets: Vec<String>,
    /// The target the others are divided by ("nginx", or "before" in a before/after run).
    #[serde(default = "nginx")]
    pub baseline: String,
    pub machine: Machine,
    pub versions: Versions,
    pub load_before: String,
    pub load_after: String,
    pub fixture_sha256: BTreeMap<String, String>,
    /// Build name → binary path and `--version`, when several weir binaries are compared.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weir_builds: BTreeMap<String, String>,
    pub weir_setup_commands: Vec<String>,
    pub server_commands: BTreeMap<String, String>,
    pub scenarios: Vec<ScenarioSummary>,
    /// The reduced shaping-accuracy comparison of a before/after run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<crate::shaping::Comparison>,
}

fn nginx() -> String {
    "nginx".to_owned()
}

fn goal_met(goal: Goal, value: f64, ratio: Option<f64>) -> Option<bool> {
    match goal {
        Goal::RatioAtLeast(x) => ratio.map(|r| r >= x),
        Goal::RatioAtMost(x) => ratio.map(|r| r <= x),
        Goal::AtMost(x) => Some(value <= x),
    }
}

/// Medians per target over the successful runs, and ratios of each other target to `baseline`.
pub fn summarize(
    s: Scenario,
    targets: &[String],
    baseline: &str,
    records: &[RunRecord],
) -> ScenarioSummary {
    let mine: Vec<&RunRecord> = records.iter().filter(|r| r.scenario == s.name()).collect();
    let mut runs_ok = BTreeMap::new();
    let mut runs_failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in targets {
        let of_t: Vec<&&RunRecord> = mine.iter().filter(|r| &r.target == t).collect();
        runs_ok.insert(t.clone(), of_t.iter().filter(|r| r.ok()).count());
        for r in of_t.iter().filter(|r| !r.ok()) {
            let why = r
                .error
                .clone()
                .unwrap_or_else(|| r.outcome.problems.join("; "));
            runs_failed
                .entry(t.clone())
                .or_default()
                .push(format!("run {}: {why}", r.run));
        }
    }
    let metrics = s
        .metrics()
        .iter()
        .map(|d: &MetricDef| {
            let mut values = BTreeMap::new();
            let mut med = BTreeMap::new();
            for t in targets {
                let v: Vec<f64> = mine
                    .iter()
                    .filter(|r| &r.target == t && r.ok())
                    .filter_map(|r| r.outcome.metrics.get(d.key).copied())
                    .collect();
                if let Some(m) = median(&v) {
                    med.insert(t.clone(), m);
                }
                values.insert(t.clone(), v);
            }
            let base = med.get(baseline).copied();
            let goal = d.goal.filter(|_| baseline == "nginx");
            let mut ratio = BTreeMap::new();
            let mut met = BTreeMap::new();
            for t in targets.iter().filter(|t| t.as_str() != baseline) {
                let Some(&w) = med.get(t) else { continue };
                let r = base.filter(|n| *n != 0.0).map(|n| w / n);
                if let Some(r) = r {
                    ratio.insert(t.clone(), r);
                }
                if let Some(g) = goal.and_then(|g| goal_met(g, w, r)) {
                    met.insert(t.clone(), g);
                }
            }
            MetricSummary {
                key: d.key.to_owned(),
                label: d.label.to_owned(),
                unit: d.unit.to_owned(),
                higher_is_better: d.higher_is_better,
                goal,
                values,
                median: med,
                ratio,
                goal_met: met,
            }
        })
        .collect();
    ScenarioSummary {
        scenario: s.name().to_owned(),
        what: s.what().to_owned(),
        runs_ok,
        runs_failed,
        metrics,
    }
}

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_goal(g: Option<Goal>) -> String {
    match g {
        Some(Goal::RatioAtLeast(x)) => format!("≥ {x}× nginx"),
        Some(Goal::RatioAtMost(x)) => format!("≤ {x}× nginx"),
        Some(Goal::AtMost(x)) => format!("≤ {x}"),
        None => String::new(),
    }
}

/// The markdown table: one row per scenario and metric.
pub fn table(summary: &Summary) -> String {
    let base = summary.baseline.as_str();
    let weirs: Vec<&String> = summary.targets.iter().filter(|t| *t != base).collect();
    let mut s = String::from("| scenario | metric | unit |");
    for t in &summary.targets {
        let _ = write!(s, " {t} |");
    }
    for t in &weirs {
        let _ = write!(s, " {t} / {base} |");
    }
    s.push_str(" goal | met | runs (all values) |\n|---|---|---|");
    for _ in 0..summary.targets.len() + weirs.len() {
        s.push_str("---:|");
    }
    s.push_str("---|---|---|\n");
    for sc in &summary.scenarios {
        for m in &sc.metrics {
            let _ = write!(s, "| {} | {} | {} |", sc.scenario, m.label, m.unit);
            for t in &summary.targets {
                let v = m.median.get(t).map(|v| fmt_num(*v)).unwrap_or("–".into());
                let _ = write!(s, " {v} |");
            }
            for t in &weirs {
                let v = m
                    .ratio
                    .get(*t)
                    .map(|v| format!("{v:.2}×"))
                    .unwrap_or("–".into());
                let _ = write!(s, " {v} |");
            }
            let met: Vec<String> = weirs
                .iter()
                .filter_map(|t| {
                    m.goal_met.get(*t).map(|b| {
                        let v = if *b { "yes" } else { "**no**" };
                        if weirs.len() > 1 {
                            format!("{t}: {v}")
                        } else {
                            v.to_owned()
                        }
                    })
                })
                .collect();
            let runs: Vec<String> = summary
                .targets
                .iter()
                .map(|t| {
                    let v = m.values.get(t).cloned().unwrap_or_default();
                    format!(
                        "{t}: {}",
                        v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                " {} | {} | {} |",
                fmt_goal(m.goal),
                met.join(", "),
                runs.join("; ")
            );
        }
    }
    s
}

/// The README of a result directory.
pub fn readme(summary: &Summary, nginx_conf: &str, raw_files: &[String]) -> String {
    let m = &summary.machine;
    let v = &summary.versions;
    let mut s = String::new();
    let title = if summary.title.is_empty() {
        "First benchmark: weir vs nginx (issue 2)"
    } else {
        &summary.title
    };
    let _ = writeln!(
        s,
        "# {title}\n\nGenerated by `weir-bench` from the raw files in `raw/` (re-render with `weir-bench report`); medians of the successful runs per server, servers alternating run by run (odd runs in the order {}, even runs reversed), each run on a freshly started server in a session of its own.\n",
        summary.targets.join(", ")
    );
    let _ = writeln!(s, "## Command\n\n```\n{}\n```\n", summary.command);
    let _ = writeln!(
        s,
        "Started {}, finished {}. Plan: {} run(s) per server and scenario, big file {} bytes, wrk {} s{}.\n",
        summary.started_utc,
        summary.finished_utc,
        summary.plan.runs,
        summary.plan.big_bytes,
        summary.plan.wrk_seconds,
        if summary.plan.conns > 0 {
            format!(", {} held connections", summary.plan.conns)
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "## Results\n\n{}", table(summary));
    if let Some(sh) = &summary.shaping {
        let _ = writeln!(s, "### Shaping accuracy\n\n{}", sh.table());
    }
    if !summary.weir_builds.is_empty() {
        let _ = writeln!(s, "weir builds compared:\n");
        for (b, v) in &summary.weir_builds {
            let _ = writeln!(s, "- `{b}`: {v}");
        }
        s.push('\n');
    }
    for sc in &summary.scenarios {
        if !sc.runs_failed.is_empty() {
            let _ = writeln!(
                s,
                "Failed runs in `{}` (excluded from the medians):",
                sc.scenario
            );
            for (t, why) in &sc.runs_failed {
                for w in why {
                    let _ = writeln!(s, "- {t} {w}");
                }
            }
            s.push('\n');
        }
    }
    let _ = writeln!(s, "## What each scenario measures\n");
    for sc in &summary.scenarios {
        let _ = writeln!(s, "- **{}**: {}", sc.scenario, sc.what);
    }
    let _ = writeln!(
        s,
        "\nUnits: GB/s = 10⁹ bytes/s; GiB = 2³⁰ bytes; KiB = 1024 bytes. CPU is utime+stime from /proc/PID/stat (USER_HZ ticks, 10 ms resolution), read before and after the client ran; softirq work of loopback delivery is charged to whichever process was on the CPU, so server CPU is an approximation on a machine where client and server share the cores. Memory per connection is (after − before) / connections held; /proc/net/sockstat is machine-wide (other users of the host show up in it) and counts both ends of every loopback connection.\n"
    );
    let _ = writeln!(s, "## Machine and versions\n\n| | |\n|---|---|");
    let rows = [
        (
            "weir",
            format!(
                "git {}{} ({}), `{}`",
                v.weir_git_rev,
                if v.weir_git_dirty {
                    " + uncommitted changes"
                } else {
                    ""
                },
                v.weir_version,
                v.weir_bin
            ),
        ),
        ("nginx", v.nginx.clone()),
        ("kernel", m.kernel.clone()),
        ("rustc", v.rustc.clone()),
        ("clients", format!("{}; {}; {}", v.axel, v.wrk, v.curl)),
        (
            "machine",
            format!(
                "{} ({}), {} CPUs \"{}\", {:.1} GiB RAM",
                m.hostname,
                m.virtualization,
                m.nproc,
                m.cpu_model,
                m.mem_total_kib as f64 / 1048576.0
            ),
        ),
        (
            "sysctls",
            format!(
                "tcp_mem {} (pages), tcp_wmem {}, tcp_rmem {}, somaxconn {}, io_uring_disabled {}",
                m.tcp_mem_pages, m.tcp_wmem, m.tcp_rmem, m.somaxconn, m.io_uring_disabled
            ),
        ),
        (
            "RLIMIT_NOFILE",
            format!(
                "{} (harness, inherited by clients and servers)",
                m.nofile_soft_after_raise
            ),
        ),
        (
            "load average",
            format!(
                "before {}, after {} (the machine is shared)",
                summary.load_before, summary.load_after
            ),
        ),
    ];
    for (k, val) in rows {
        let _ = writeln!(s, "| {k} | {val} |");
    }
    let _ = writeln!(s, "\n## Servers\n\nweir data directory, created once (items are imported into weir's content store; a signed link per item):\n\n```");
    for c in &summary.weir_setup_commands {
        let _ = writeln!(s, "{c}");
    }
    let _ = writeln!(s, "```\n\nStarted for every run (after `weir cart add` of both items again, since a completed download leaves the cart); ready when it prints `listening on`:\n\n```");
    for (t, c) in &summary.server_commands {
        let _ = writeln!(s, "# {t}\n{c}");
    }
    let _ = writeln!(s, "```\n\nnginx configuration (port differs per run; the last one used):\n\n```nginx\n{nginx_conf}```\n");
    let _ = writeln!(
        s,
        "Fixture (same bytes for both servers; xorshift64* from a fixed seed):\n"
    );
    for (id, sha) in &summary.fixture_sha256 {
        let _ = writeln!(s, "- `{id}`: sha256 `{sha}`");
    }
    let _ = writeln!(s, "\n## Raw data\n\n`summary.json` (everything above as data) and one JSON per run in `raw/` (metrics, exact client commands, wrk output, memory snapshots):\n");
    for f in raw_files {
        let _ = writeln!(s, "- `raw/{f}`");
    }
    s
}

/// Writes a run directory's `summary.json`, `nginx.conf` (when nginx ran) and `README.md`, and
/// prints the table. The README is rendered from the summary alone, so `weir-bench report`
/// renders it again from the stored `summary.json`.
pub fn write_run(
    out: &std::path::Path,
    summary: &Summary,
    nginx_conf: &str,
    raw_files: &[String],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    if !nginx_conf.is_empty() {
        std::fs::write(out.join("nginx.conf"), nginx_conf)?;
    }
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    std::fs::write(
        out.join("README.md"),
        readme(summary, nginx_conf, raw_files),
    )?;
    println!("{}", table(summary));
    if let Some(sh) = &summary.shaping {
        println!("{}", sh.table());
    }
    println!("written to {}", out.display());
    Ok(())
}

/// What every run directory's README states besides its figures: the command, when, the
/// machine, the versions and the load around it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub bench: String,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub machine: Machine,
    pub versions: Versions,
    pub load_before: String,
    pub load_after: String,
}

impl Header {
    /// Collected when a run starts; [`write_simple`] stamps the end.
    pub fn start(bench: &str, weir_bin: &std::path::Path) -> Header {
        Header {
            bench: bench.to_owned(),
            command: crate::shell_line(),
            started_utc: crate::util::utc_timestamp(),
            finished_utc: String::new(),
            machine: Machine::collect(crate::util::nofile_limit()),
            versions: Versions::collect(&crate::workspace_root(), weir_bin),
            load_before: crate::procfs::loadavg(),
            load_after: String::new(),
        }
    }

    /// The README lines for the command, the machine and the versions.
    pub fn markdown(&self) -> String {
        let (m, v) = (&self.machine, &self.versions);
        format!(
            "## Command\n\n```\n{}\n```\n\nStarted {}, finished {}; load average before {}, after {} (the machine is shared).\n\n## Machine and versions\n\n| | |\n|---|---|\n| weir | git {}{} ({}), `{}` |\n| nginx | {} |\n| kernel | {} |\n| rustc | {} |\n| clients | {}; {}; {} |\n| machine | {} ({}), {} CPUs \"{}\", {:.1} GiB RAM |\n| RLIMIT_NOFILE | {} |\n",
            self.command,
            self.started_utc,
            self.finished_utc,
            self.load_before,
            self.load_after,
            v.weir_git_rev,
            if v.weir_git_dirty { " + uncommitted changes" } else { "" },
            v.weir_version,
            v.weir_bin,
            v.nginx,
            m.kernel,
            v.rustc,
            v.axel,
            v.wrk,
            v.curl,
            m.hostname,
            m.virtualization,
            m.nproc,
            m.cpu_model,
            m.mem_total_kib as f64 / 1048576.0,
            m.nofile_soft_after_raise,
        )
    }
}

/// The report of a benchmark whose figures are one markdown table computed from its raw runs
/// (overhead, loadgen, shaping, send-path): `summary.json` = the header and `data`, and a
/// README with the title, the table, `notes` and the header.
pub fn write_simple(
    out: &std::path::Path,
    mut header: Header,
    title: &str,
    table_md: &str,
    notes: &str,
    data: &impl Serialize,
) -> anyhow::Result<()> {
    header.finished_utc = crate::util::utc_timestamp();
    header.load_after = crate::procfs::loadavg();
    std::fs::create_dir_all(out)?;
    let summary = serde_json::json!({ "header": header, "data": data });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(
        out.join("README.md"),
        format!(
            "# {title}\n\nGenerated by `weir-bench`; `weir-bench report` renders the table again from `summary.json`.\n\n{table_md}\n{notes}\n{}",
            header.markdown()
        ),
    )?;
    println!("{table_md}");
    println!("written to {}", out.display());
    Ok(())
}
