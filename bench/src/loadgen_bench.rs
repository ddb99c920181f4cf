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

use crate::overhead::procs::{self, median, Weir};

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
    #[arg(long, default_value = "10s", value_parser = procs::parse_secs)]
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
    #[arg(long, default_value = "30s", value_parser = procs::parse_secs)]
    pub conns_duration: Duration,
    /// Where axel writes the file (RAM, so the disk is not the bottleneck).
    #[arg(long, default_value = "/dev/shm/weir-bench-axel")]
    pub axel_out: PathBuf,
}

/// Where the server under test runs, for the CPU scheduler. With autogroup scheduling (Linux's
/// default on desktops and many servers, `/proc/sys/kernel/sched_autogroup_enabled`) CPU time is
/// shared between sessions first, then between the threads of each; systemd's per-service cgroups
/// do the same. On two cores shared by server and client, that decides how the cores are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Session {
    /// Its own session: where nginx puts itself by default (`daemon on` calls `setsid`) and
    /// where a server runs in production, apart from whoever loads it.
    Own,
    /// The bench's session, shared with the load tool: every thread competes on its own.
    Shared,
}

impl Session {
    /// The target name in runs.json and the table.
    fn target(self) -> &'static str {
        match self {
            Session::Own => "nginx",
            Session::Shared => "nginx, shared session",
        }
    }
}

const F4K: u64 = 4096;
const F1G: u64 = 1 << 30;
const USER: &str = "alice";
const PASSWORD: &str = "bench-password";

/// A target server: its base URL, and credentials for weir.
struct Target {
    name: &'static str,
    /// The server's PID (its worker processes are found through /proc).
    pid: u32,
    url_4k: String,
    url_1g: String,
    auth: Option<String>,
}

/// Run the benchmark and write its results under `args.out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(args.out.join("raw"))?;
    let root = args.work.join("root");
    std::fs::create_dir_all(&root)?;
    procs::write_env(&args.out.join("env.txt"), &args.weir, &args.weir_load)?;
    procs::ensure_file(&root.join("f4k"), F4K)?;
    procs::ensure_file(&root.join("f1g"), F1G)?;
    procs::ensure_file(&root.join("f64m"), 64 << 20)?;

    let weir = if args.with_weir && !args.skip_pairs {
        let data = args.work.join("data");
        if !data.join(".bench-ready").exists() {
            let _ = std::fs::remove_dir_all(&data);
            procs::weir_admin(
                &args.weir,
                &data,
                &["user", "add", USER, "--password-stdin"],
                Some(PASSWORD),
            )?;
            for id in ["f4k", "f1g"] {
                let file = root.join(id);
                procs::weir_admin(
                    &args.weir,
                    &data,
                    &["item", "add", id, file.to_str().context("path")?],
                    None,
                )?;
                procs::weir_admin(&args.weir, &data, &["cart", "add", USER, id], None)?;
            }
            std::fs::write(data.join(".bench-ready"), b"")?;
        }
        Some(Weir::start(
            &args.weir,
            &data,
            2,
            &["--grace", "24h"],
            &args.out.join("raw/weir.log"),
        )?)
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
            let mut nginx = Nginx::start(&args.work, session)?;
            let base = format!("http://127.0.0.1:{}", nginx.port);
            let mut targets = vec![Target {
                name: session.target(),
                pid: nginx.child.id(),
                url_4k: format!("{base}/f4k"),
                url_1g: format!("{base}/f1g"),
                auth: None,
            }];
            // weir (for information) once, alongside the first nginx.
            if let (0, Some(w)) = (i, &weir) {
                targets.push(Target {
                    name: "weir",
                    pid: w.pid(),
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
            nginx.stop()?;
        }
    }
    if let Some(w) = weir {
        w.stop()?;
    }
    if !args.skip_conns {
        let mut nginx = Nginx::start(&args.work, Session::Own)?;
        let base = format!("http://127.0.0.1:{}", nginx.port);
        for (procs_n, conns) in [(1, args.conns_one), (2, args.conns_two)] {
            let v = hold(&args, &base, procs_n, conns)?;
            eprintln!("{v}");
            runs.push(v);
            save(&runs)?;
        }
        nginx.stop()?;
    }
    let mut table = table(&runs);
    let autogroup = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .map_or_else(|_| "absent".to_string(), |s| s.trim().to_string());
    table += &format!(
        "\nnginx in its own session (as `daemon on` puts it) except in the \"shared session\" rows; \
         weir, when measured, shares the bench's session. sched_autogroup_enabled: {autogroup}.\n"
    );
    std::fs::write(args.out.join("table.md"), &table)?;
    println!("{table}");
    Ok(())
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
        "loadavg_after": procs::loadavg(),
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn basic(auth: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in auth.as_bytes().chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    format!("Authorization: Basic {s}")
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
    let load_before = procs::loadavg();
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .args(["-c100", "-d", &secs(args.duration)]);
    if let Some(a) = &t.auth {
        cmd.args(["-H", &basic(a)]);
    }
    let cpu = Cpu::start(t.pid);
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
    procs::read_summary(out)
}

fn urlopen(args: &Args, t: &Target, r: usize, workers: usize) -> anyhow::Result<Value> {
    let load_before = procs::loadavg();
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
    let cpu = Cpu::start(t.pid);
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
    let load_before = procs::loadavg();
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
    let load_before = procs::loadavg();
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
    let load_before = procs::loadavg();
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
fn table(runs: &[Value]) -> String {
    // The median of one field of a tool's runs against a target.
    let field = |tool: &str, target: &str, key: &str| {
        median(
            runs.iter()
                .filter(|v| v["tool"] == tool && v["target"] == target)
                .filter_map(|v| v[key].as_f64())
                .filter(|x| x.is_finite())
                .collect(),
        )
    };
    let med = |tool: &str, target: &str| field(tool, target, "value");
    let targets = [Session::Own.target(), Session::Shared.target(), "weir"];
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
struct Cpu {
    children: f64,
    server_pid: u32,
    server: f64,
}

impl Cpu {
    fn start(server_pid: u32) -> Cpu {
        Cpu {
            children: ended_children_cpu(),
            server_pid,
            server: server_cpu(server_pid),
        }
    }

    /// CPU seconds since `start`.
    fn end(self) -> CpuUsed {
        CpuUsed {
            client: ended_children_cpu() - self.children,
            server: server_cpu(self.server_pid) - self.server,
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

/// CPU seconds of a server process and its direct children (/proc/PID/task/PID/children).
fn server_cpu(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .map(|p| procs::cpu_seconds(p).unwrap_or(f64::NAN))
        .sum()
}

/// Run the child in a session of its own (as `daemon on` would), and have it sent SIGTERM if
/// the bench dies first: outside the bench's session a Ctrl-C no longer reaches it.
fn own_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes two system calls,
    // setsid(2) and prctl(2), both async-signal-safe; it allocates nothing and touches no memory
    // shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Our own nginx: two workers, on a free loopback port, serving `work/root`.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(work: &Path, session: Session) -> anyhow::Result<Nginx> {
        let work = std::fs::canonicalize(work)?;
        std::fs::create_dir_all(work.join("tmp"))?;
        std::fs::create_dir_all(work.join("logs"))?;
        // Free port: bind :0, note it, release it. nginx could lose a race for it; it then fails
        // to start and we say so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = work.display();
        let conf = format!(
            "worker_processes 2;
worker_rlimit_nofile 20000;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=100 inactive=60s;
  client_body_temp_path {d}/tmp/b; proxy_temp_path {d}/tmp/p; fastcgi_temp_path {d}/tmp/f;
  uwsgi_temp_path {d}/tmp/u; scgi_temp_path {d}/tmp/s;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    root {d}/root;
    location /slow/ {{ alias {d}/root/; limit_rate 2k; }}
  }}
}}
"
        );
        std::fs::write(work.join("nginx.conf"), conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&work)
            .arg("-c")
            .arg(work.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null());
        if session == Session::Own {
            own_session(&mut cmd);
        }
        let mut child = cmd.spawn().context("starting nginx")?;
        // Readiness: a successful connect (nginx prints nothing when it is ready).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!("nginx exited ({st}); see {d}/error.log");
            }
            if Instant::now() > deadline {
                procs::terminate(&mut child)?;
                bail!("nginx did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, port })
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        procs::terminate(&mut self.child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = procs::terminate(&mut self.child);
    }
}
