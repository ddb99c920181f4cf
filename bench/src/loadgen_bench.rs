//! weir-load against the classics (issue 5), all against one nginx on loopback in the same run:
//! `weir-load urlopen --threads 100` vs `wrk -c100` on a 4 KiB file (requests/s; each tool at one
//! and at two threads, since on two cores shared with the server the best count differs by tool) and
//! `weir-load forty --users 1 --connections 40` vs `axel -n 40` on a 1 GiB file (MB/s), the order
//! of each pair alternating round by round; optionally the same pairs against weir (for
//! information). The pairs run twice: with nginx in a session of its own, where it puts itself by
//! default and where a server runs in production, and in the bench's session, shared with the
//! load tool (see [`Session`]: the kernel's autogroup scheduling splits the two cores differently).
//! Then the connections weir-load holds open against nginx (two workers) from several
//! source addresses, from one process and with `--processes 2`, cross-checked with the kernel's
//! own count of TCP sockets in /proc/net/sockstat.
//!
//! Holding connections: nginx serves `/slow/` with a tiny `limit_rate`, so each of forty's ranged
//! downloads stays open for the whole run, and `open_file_cache` shares one file descriptor per
//! worker, so each download costs nginx one descriptor (the socket). `listen ... reuseport` splits
//! the connections evenly between the two workers (each limited to 20,000 descriptors).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::procfs;
use crate::servers::nginx::{NginxSetup, Options as NginxOptions};
use crate::servers::{weir, Session};
use crate::util::{basic_auth, median_or_nan, parse_secs};

/// `weir-bench loadgen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Results directory (runs.json, table.md, env.txt, raw/).
    #[arg(long)]
    pub out: PathBuf,
    /// Scratch directory: nginx prefix, document root, weir data dir (files reused if present).
    #[arg(long, default_value = "/tmp/weir-bench-loadgen")]
    pub work: PathBuf,
    /// The weir binary (release build).
    #[arg(long, default_value = "target/release/weir")]
    pub weir: PathBuf,
    /// The weir-load binary (release build).
    #[arg(long, default_value = "target/release/weir-load")]
    pub weir_load: PathBuf,
    /// Rounds of each pair (the order within a pair alternates).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each wrk / urlopen / forty run.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub duration: Duration,
    /// Also run both pairs against weir (release, 2 workers), for information.
    #[arg(long)]
    pub with_weir: bool,
    /// Skip the throughput pairs (only the connection counts).
    #[arg(long)]
    pub skip_pairs: bool,
    /// Skip the connection counts.
    #[arg(long)]
    pub skip_conns: bool,
    /// Where nginx runs for the CPU scheduler during the throughput pairs, each in turn (the
    /// connection counts use `own`). `own`: its own session, where nginx puts itself by default
    /// and where a service runs in production; `shared`: the bench's session, with the load tool.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "own,shared")]
    pub sessions: Vec<Session>,
    /// Source addresses for the connection counts.
    #[arg(long, default_value = "127.0.0.2-127.0.0.60")]
    pub source: String,
    /// Connections to open from one process (users × 40).
    #[arg(long, default_value_t = 19_400)]
    pub conns_one: usize,
    /// Connections to open with --processes 2.
    #[arg(long, default_value_t = 37_000)]
    pub conns_two: usize,
    /// Length of a connection-count run.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub conns_duration: Duration,
    /// Where axel writes the file (RAM, so the disk is not the bottleneck).
    #[arg(long, default_value = "/dev/shm/weir-bench-axel")]
    pub axel_out: PathBuf,
}

/// The target name in runs.json and the table for nginx in `session`.
fn session_target(s: Session) -> &'static str {
    match s {
        Session::Own => "nginx",
        Session::Shared => "nginx, shared session",
    }
}

const F4K: u64 = 4096;
const F1G: u64 = 1 << 30;
const USER: &str = "alice";
const PASSWORD: &str = "bench-password";

/// How long a stopped server may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A target server: its base URL, and credentials for weir.
struct Target {
    name: &'static str,
    /// The server's PIDs (nginx: master and workers), for CPU time.
    pids: Vec<i32>,
    url_4k: String,
    url_1g: String,
    auth: Option<String>,
}

/// Run the benchmark and write its results under `args.out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(args.out.join("raw"))?;
    let work = std::fs::canonicalize({
        std::fs::create_dir_all(&args.work)?;
        &args.work
    })?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let log_dir = args.out.join("raw");
    let header = crate::report::Header::start("loadgen", &args.weir);
    crate::fixture::ensure(&root.join("f4k"), F4K, 0x5eed_0201)?;
    crate::fixture::ensure(&root.join("f1g"), F1G, 0x5eed_0202)?;
    crate::fixture::ensure(&root.join("f64m"), 64 << 20, 0x5eed_0203)?;
    let nginx = NginxSetup::create(&work, &root)?;
    let nginx_opts = |session| NginxOptions {
        slow_path: true,
        session: Some(session),
        ..NginxOptions::default()
    };

    let weir = if args.with_weir && !args.skip_pairs {
        let data = args.work.join("data");
        if !data.join(".bench-ready").exists() {
            let _ = std::fs::remove_dir_all(&data);
            weir::admin(
                &args.weir,
                &data,
                &["user", "add", USER, "--password-stdin"],
                Some(PASSWORD),
            )?;
            for id in ["f4k", "f1g"] {
                let file = root.join(id);
                weir::admin(
                    &args.weir,
                    &data,
                    &["item", "add", id, file.to_str().context("path")?],
                    None,
                )?;
                weir::admin(&args.weir, &data, &["cart", "add", USER, id], None)?;
            }
            std::fs::write(data.join(".bench-ready"), b"")?;
        }
        let serve_args: Vec<String> = [
            "serve",
            "--data-dir",
            &data.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--grace",
            "24h",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Some(weir::serve(&args.weir, &serve_args, &[], &log_dir, "weir")?)
    } else {
        None
    };

    let mut runs: Vec<Value> = Vec::new();
    let save = |runs: &Vec<Value>| -> anyhow::Result<()> {
        std::fs::write(
            args.out.join("runs.json"),
            serde_json::to_string_pretty(runs)?,
        )?;
        Ok(())
    };
    if !args.skip_pairs {
        for (i, &session) in args.sessions.iter().enumerate() {
            let srv = nginx.start(&nginx_opts(session), &log_dir, session_target(session))?;
            let base = format!("http://{}", srv.addr);
            let mut targets = vec![Target {
                name: session_target(session),
                pids: srv.pids(),
                url_4k: format!("{base}/f4k"),
                url_1g: format!("{base}/f1g"),
                auth: None,
            }];
            // weir (for information) once, alongside the first nginx.
            if let (0, Some(w)) = (i, &weir) {
                targets.push(Target {
                    name: "weir",
                    pids: w.pids(),
                    url_4k: format!("http://{}/d/f4k", w.addr),
                    url_1g: format!("http://{}/d/f1g", w.addr),
                    auth: Some(format!("{USER}:{PASSWORD}")),
                });
            }
            for r in 1..=args.rounds {
                for t in &targets {
                    pair_round(&args, t, r, &mut runs, &save)?;
                }
            }
            srv.stop(STOP_GRACE)?;
        }
    }
    if let Some(w) = weir {
        w.stop(STOP_GRACE)?;
    }
    if !args.skip_conns {
        let srv = nginx.start(&nginx_opts(Session::Own), &log_dir, "nginx-conns")?;
        let base = format!("http://{}", srv.addr);
        for (procs_n, conns) in [(1, args.conns_one), (2, args.conns_two)] {
            let v = hold(&args, &base, procs_n, conns)?;
            eprintln!("{v}");
            runs.push(v);
            save(&runs)?;
        }
        srv.stop(STOP_GRACE)?;
    }
    let mut table = table(&runs);
    let autogroup = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .map_or_else(|_| "absent".to_string(), |s| s.trim().to_string());
    table += &format!(
        "\nnginx in its own session (as `daemon on` puts it) except in the \"shared session\" rows; \
         weir, when measured, runs in a session of its own too. sched_autogroup_enabled: {autogroup}.\n"
    );
    crate::report::write_simple(
        &args.out,
        header,
        "weir-load against the classic tools (issue 5)",
        &table,
        "Raw: `runs.json` (one record per tool run), wrk's output and weir-load's results in `raw/`.\n",
        &runs,
    )
}

/// One round of both pairs against `t`: the classic first on odd rounds, weir-load first on even
/// ones; each 4 KiB tool at one and at two threads (on two cores shared with the server under test
/// the best thread count differs by tool, so each is measured at both).
fn pair_round(
    args: &Args,
    t: &Target,
    r: usize,
    runs: &mut Vec<Value>,
    save: &dyn Fn(&Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let classic_first = r % 2 == 1;
    for step in 0..2 {
        let classic = (step == 0) == classic_first;
        for threads in [1, 2] {
            let v = if classic {
                wrk(args, t, r, threads)?
            } else {
                urlopen(args, t, r, threads)?
            };
            eprintln!("{v}");
            runs.push(v);
            save(runs)?;
        }
    }
    for step in 0..2 {
        let classic = (step == 0) == classic_first;
        let v = if classic {
            axel(args, t, r)?
        } else {
            forty(args, t, r)?
        };
        eprintln!("{v}");
        runs.push(v);
        save(runs)?;
    }
    Ok(())
}

fn record(tool: &str, target: &str, round: usize, metric: &str, value: f64, extra: Value) -> Value {
    let mut v = json!({
        "tool": tool, "target": target, "round": round, "metric": metric, "value": value,
        "loadavg_after": procfs::loadavg(),
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// `Authorization: Basic ...` for `user:password`.
fn basic(auth: &str) -> String {
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    format!("Authorization: {}", basic_auth(user, password))
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The tool names the table groups by.
fn wrk_name(threads: usize) -> String {
    format!("wrk -t{threads} -c100")
}

fn urlopen_name(workers: usize) -> String {
    format!("weir-load urlopen --threads 100 --workers {workers}")
}

fn wrk(args: &Args, t: &Target, r: usize, threads: usize) -> anyhow::Result<Value> {
    let load_before = procfs::loadavg();
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .args(["-c100", "-d", &secs(args.duration)]);
    if let Some(a) = &t.auth {
        cmd.args(["-H", &basic(a)]);
    }
    let cpu = Cpu::start(&t.pids);
    let out = cmd.arg(&t.url_4k).output().context("running wrk")?;
    let cpu = cpu.end();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(
        args.out
            .join(format!("raw/wrk-t{threads}-{}-{r}.txt", t.name)),
        &text,
    )?;
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk output")?
        .trim()
        .parse()?;
    // wrk counts non-2xx/3xx responses on a separate line; a 403 storm must not pass as speed.
    let non2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map(|n| n.trim().parse().unwrap_or(u64::MAX))
        .unwrap_or(0);
    let requests = rps * args.duration.as_secs_f64();
    let mut extra = json!({"non_2xx": non2xx, "loadavg_before": load_before});
    cpu.put(&mut extra, requests, args.duration);
    Ok(record(&wrk_name(threads), t.name, r, "req/s", rps, extra))
}

fn weir_load(
    args: &Args,
    scenario: &str,
    url: &str,
    extra: &[String],
    auth: Option<&str>,
    out: &Path,
) -> anyhow::Result<Value> {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(&args.weir_load);
    cmd.args([scenario, url])
        .args(extra)
        .arg("--out")
        .arg(out)
        .arg("--no-progress");
    if let Some(a) = auth {
        cmd.args(["--credentials", a]);
    }
    let st = cmd
        .stdout(Stdio::null())
        .status()
        .context("running weir-load")?;
    if !st.success() {
        bail!("weir-load {scenario} failed: {st}");
    }
    read_summary(out)
}

/// weir-load's summary.json in `dir`.
pub fn read_summary(dir: &Path) -> anyhow::Result<Value> {
    let p = dir.join("summary.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_str(&s)?)
}

fn urlopen(args: &Args, t: &Target, r: usize, workers: usize) -> anyhow::Result<Value> {
    let load_before = procfs::loadavg();
    let out = args
        .out
        .join(format!("raw/urlopen-w{workers}-{}-{r}", t.name));
    let extra = [
        "--threads".to_string(),
        "100".into(),
        "--workers".into(),
        workers.to_string(),
        "--duration".into(),
        secs(args.duration),
    ];
    let cpu = Cpu::start(&t.pids);
    let s = weir_load(args, "urlopen", &t.url_4k, &extra, t.auth.as_deref(), &out)?;
    let cpu = cpu.end();
    let mut extra = json!({"errors_total": s["errors_total"], "errors": s["errors"], "loadavg_before": load_before});
    cpu.put(
        &mut extra,
        s["requests"].as_f64().unwrap_or(0.0),
        args.duration,
    );
    Ok(record(
        &urlopen_name(workers),
        t.name,
        r,
        "req/s",
        s["requests_per_sec"].as_f64().unwrap_or(0.0),
        extra,
    ))
}

fn forty(args: &Args, t: &Target, r: usize) -> anyhow::Result<Value> {
    let load_before = procfs::loadavg();
    let out = args.out.join(format!("raw/forty-{}-{r}", t.name));
    let extra = ["--users", "1", "--connections", "40", "--duration"].map(String::from);
    let mut extra = extra.to_vec();
    extra.push(secs(args.duration));
    let s = weir_load(args, "forty", &t.url_1g, &extra, t.auth.as_deref(), &out)?;
    Ok(record(
        "weir-load forty --users 1 --connections 40",
        t.name,
        r,
        "MB/s",
        s["goodput_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
        json!({"errors_total": s["errors_total"], "errors": s["errors"],
               "downloads_completed": s["downloads_completed"], "loadavg_before": load_before}),
    ))
}

/// One axel download of the 1 GiB file into RAM; MB/s over its wall time. axel 2.17 has been
/// seen to crash (SIGSEGV), so one retry, and the failure is recorded if the retry fails too.
fn axel(args: &Args, t: &Target, r: usize) -> anyhow::Result<Value> {
    let load_before = procfs::loadavg();
    let mut failures = Vec::new();
    for _try in 0..2 {
        let _ = std::fs::remove_file(&args.axel_out);
        let _ = std::fs::remove_file(args.axel_out.with_extension("st"));
        let mut cmd = Command::new("axel");
        cmd.args(["-q", "-n", "40", "-o"]).arg(&args.axel_out);
        if let Some(a) = &t.auth {
            cmd.args(["-H", &basic(a)]);
        }
        let start = Instant::now();
        let st = cmd
            .arg(&t.url_1g)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let wall = start.elapsed().as_secs_f64();
        let size = std::fs::metadata(&args.axel_out)
            .map(|m| m.len())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&args.axel_out);
        if st.success() && size == F1G {
            return Ok(record(
                "axel -n 40",
                t.name,
                r,
                "MB/s",
                F1G as f64 / wall / 1e6,
                json!({"wall_s": wall, "failed_tries": failures, "loadavg_before": load_before}),
            ));
        }
        failures.push(format!("{st}, {size} bytes"));
    }
    Ok(record(
        "axel -n 40",
        t.name,
        r,
        "MB/s",
        f64::NAN,
        json!({"failed_tries": failures}),
    ))
}

/// Hold as many connections as `conns` against nginx's rate-limited path; sample the kernel's
/// TCP socket count meanwhile.
fn hold(args: &Args, base: &str, processes: usize, conns: usize) -> anyhow::Result<Value> {
    let load_before = procfs::loadavg();
    let out = args.out.join(format!("raw/conns-{processes}proc"));
    let users = conns.div_ceil(40);
    let stop = Arc::new(AtomicBool::new(false));
    let max_inuse = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_inuse) = (stop.clone(), max_inuse.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = sockstat_tcp_inuse() {
                    max_inuse.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let extra: Vec<String> = [
        "--users".to_string(),
        users.to_string(),
        "--connections".into(),
        "40".into(),
        "--duration".into(),
        secs(args.conns_duration),
        "--stall-timeout".into(),
        "600s".into(),
        "--source".into(),
        args.source.clone(),
        "--processes".into(),
        processes.to_string(),
    ]
    .into();
    let s = weir_load(
        args,
        "forty",
        &format!("{base}/slow/f64m"),
        &extra,
        None,
        &out,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let s = s?;
    let inuse = max_inuse.load(Ordering::Relaxed);
    Ok(record(
        &format!("weir-load forty --processes {processes}"),
        "nginx",
        1,
        "max_open_connections",
        s["max_open_connections"].as_f64().unwrap_or(0.0),
        json!({"asked": users * 40, "users": users, "errors_total": s["errors_total"], "errors": s["errors"],
               "source_addresses": s["source_addresses"],
               "sockstat_tcp_inuse_max": inuse, "loadavg_before": load_before}),
    ))
}

/// `TCP: inuse N` from /proc/net/sockstat (both ends of a loopback connection count).
fn sockstat_tcp_inuse() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "inuse" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Medians per tool and target, and weir-load / classic ratios.
pub fn table(runs: &[Value]) -> String {
    // The median of one field of a tool's runs against a target.
    let field = |tool: &str, target: &str, key: &str| {
        median_or_nan(
            &runs
                .iter()
                .filter(|v| v["tool"] == tool && v["target"] == target)
                .filter_map(|v| v[key].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    let med = |tool: &str, target: &str| field(tool, target, "value");
    let targets = [
        session_target(Session::Own),
        session_target(Session::Shared),
        "weir",
    ];
    let n = |tool: &str, target: &str| {
        runs.iter()
            .filter(|v| v["tool"] == tool && v["target"] == target)
            .count()
    };
    let mut out = String::from(
        "| target | file | classic (median) | weir-load (median) | ratio weir-load / classic | runs |\n|---|---|---|---|---|---|\n",
    );
    let mut row = |target: &str, file: &str, classic: &str, ours: &str, unit: &str| {
        let (c, o) = (med(classic, target), med(ours, target));
        out += &format!(
            "| {target} | {file} | {classic}: {c:.0} {unit} | {ours}: {o:.0} {unit} | {:.2}× | {}+{} |\n",
            o / c,
            n(classic, target),
            n(ours, target)
        );
    };
    for target in targets {
        // Requests per second: each tool at one and two threads, then each at its best.
        let pairs = [1, 2].map(|t| (wrk_name(t), urlopen_name(t)));
        if pairs.iter().all(|(_, o)| n(o, target) > 0) {
            for (c, o) in &pairs {
                row(target, "4 KiB", c, o, "req/s");
            }
            let best = |names: [&String; 2]| {
                names
                    .into_iter()
                    .max_by(|a, b| med(a, target).total_cmp(&med(b, target)))
                    .cloned()
                    .unwrap_or_default()
            };
            let c = best([&pairs[0].0, &pairs[1].0]);
            let o = best([&pairs[0].1, &pairs[1].1]);
            row(target, "4 KiB, each at its best", &c, &o, "req/s");
        }
        let (classic, ours) = ("axel -n 40", "weir-load forty --users 1 --connections 40");
        if n(ours, target) > 0 {
            row(target, "1 GiB", classic, ours, "MB/s");
        }
    }
    // Where the CPU went in the 4 KiB runs: a measure of each tool's cost that the
    // scheduler's split of the two cores does not decide.
    out += "\n| target | 4 KiB tool | req/s (median) | client CPU µs/request | server CPU µs/request | client CPU, cores |\n|---|---|---|---|---|---|\n";
    for target in targets {
        for threads in [1, 2] {
            for tool in [wrk_name(threads), urlopen_name(threads)] {
                if n(&tool, target) == 0 {
                    continue;
                }
                out += &format!(
                    "| {target} | {tool} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                    med(&tool, target),
                    field(&tool, target, "client_cpu_us_per_req"),
                    field(&tool, target, "server_cpu_us_per_req"),
                    field(&tool, target, "client_cores"),
                );
            }
        }
    }
    out += "\n| connections held against nginx (2 workers) | asked | max_open_connections | /proc/net/sockstat TCP inuse max (both ends) | errors |\n|---|---|---|---|---|\n";
    for v in runs
        .iter()
        .filter(|v| v["metric"] == "max_open_connections")
    {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            v["tool"].as_str().unwrap_or(""),
            v["asked"],
            v["value"],
            v["sockstat_tcp_inuse_max"],
            v["errors_total"]
        );
    }
    out
}

/// CPU used during one tool run: by the tool (this process's children that ended meanwhile: the
/// tool and any processes it waited for) and by the server (its process and its children, e.g.
/// nginx's workers).
struct Cpu<'a> {
    children: f64,
    server_pids: &'a [i32],
    server: f64,
}

impl<'a> Cpu<'a> {
    fn start(server_pids: &'a [i32]) -> Cpu<'a> {
        Cpu {
            children: ended_children_cpu(),
            server_pids,
            server: procfs::cpu_seconds(server_pids).unwrap_or(f64::NAN),
        }
    }

    /// CPU seconds since `start`.
    fn end(self) -> CpuUsed {
        CpuUsed {
            client: ended_children_cpu() - self.children,
            server: procfs::cpu_seconds(self.server_pids).unwrap_or(f64::NAN) - self.server,
        }
    }
}

/// Client and server CPU seconds over one tool run.
struct CpuUsed {
    client: f64,
    server: f64,
}

impl CpuUsed {
    /// Add the figures, in total and per request, to a run's record.
    fn put(&self, extra: &mut Value, requests: f64, duration: Duration) {
        let per = |s: f64| {
            if requests > 0.0 {
                s * 1e6 / requests
            } else {
                f64::NAN
            }
        };
        extra["client_cpu_s"] = json!(self.client);
        extra["server_cpu_s"] = json!(self.server);
        extra["client_cpu_us_per_req"] = json!(per(self.client));
        extra["server_cpu_us_per_req"] = json!(per(self.server));
        extra["client_cores"] = json!(self.client / duration.as_secs_f64());
    }
}

/// User + system CPU seconds of this process's children that ended and were waited for.
fn ended_children_cpu() -> f64 {
    // SAFETY: `rusage` is plain integers, so all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}
