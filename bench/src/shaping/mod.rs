//! Shaping-accuracy benchmark (issue 4): many users, each downloading over many ranged
//! connections, against weir (io_uring and epoll drivers) and nginx `limit_rate`.
//!
//! One scenario = one server process. The client is a single mio event loop that opens
//! `users × conns` connections (each user's ranges are disjoint slices of one large file), waits
//! until every connection has its `206` head, lets the shaper settle, then counts body bytes per
//! connection over a measurement window. During the window it samples the server's CPU
//! (`/proc/PID/stat`), kernel TCP memory (`/proc/net/sockstat`) and the server-side sockets'
//! memory (`ss -tm`). In the "paced" scenarios the server does not shape; the client itself reads
//! each user's connections at the user's rate, which gives an unshaped run at the same throughput
//! (the CPU reference) and stalled unshaped sockets (the kernel-memory reference). The
//! "a-paced" scenarios shape in the server *and* pace in the client, with the same client code
//! as "paced": the server's CPU compares shaped and unshaped serving at the same rate, and the
//! CPU of server + client + `ksoftirqd` over the window ("total") the whole machine's cost of
//! it (on loopback the client's receive work, which a deployment does elsewhere, is part of it).
//!
//! Not a timed test: it prints and stores numbers, it asserts nothing.

pub mod client;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

use crate::procfs;
use crate::servers::nginx::{NginxSetup, Options as NginxOptions};
use crate::servers::weir::{admin, serve};
use crate::servers::Running;
use crate::util::basic_auth;
use client::{read_conn, Conn, State};

/// Command-line arguments of the benchmark.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// The weir binary (`cargo build --release -p weir`).
    #[arg(long, default_value = "target/release/weir")]
    pub weir: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,
    /// Scratch directory: the served file, weir's data dir, nginx's prefix. Reused across runs.
    #[arg(long, default_value = "/tmp/weir-shaping-bench")]
    pub work_dir: PathBuf,
    /// Where the raw JSON goes (one file per scenario plus summary.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated scenarios, or `all`: SERVER-a (users capped), SERVER-b (and a binding
    /// global cap), SERVER-paced (unshaped, the client paces), SERVER-a-paced (shaped and the
    /// client paces), SERVER-stalled (the client reads nothing; weir shaped, nginx not), for
    /// SERVER = uring, epoll or nginx.
    #[arg(long, default_value = "all")]
    pub scenarios: String,
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Connections per user.
    #[arg(long, default_value_t = 40)]
    pub conns: usize,
    /// Each user's cap, KiB/s.
    #[arg(long, default_value_t = 256)]
    pub user_kib: u64,
    /// The global cap of the (b) scenarios, MiB/s.
    #[arg(long, default_value_t = 25)]
    pub global_mib: u64,
    /// Size of the served file, MiB (large enough that no range finishes).
    #[arg(long, default_value_t = 1024)]
    pub file_mib: u64,
    /// Seconds after the last `206` head before the window opens.
    #[arg(long, default_value_t = 5)]
    pub settle_s: u64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20)]
    pub window_s: u64,
    /// weir worker threads (nginx worker processes: the same).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// Which server, and who paces.
#[derive(Clone, Copy, Debug)]
enum Server {
    Weir { driver: &'static str },
    Nginx,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    server: Server,
    /// Users capped in the server (weir: `--rate`; nginx: `limit_rate` = user share / conns).
    shaped: bool,
    /// weir `--global-rate` (the (b) case); for nginx, (b) means `limit_rate` = fair share / conns.
    global: bool,
    /// The client reads each user at its expected rate (server unshaped).
    paced: bool,
    /// The client reads the heads and then nothing (implies `paced` with rate 0): every send
    /// buffer fills, which is what SO_SNDBUF sizing is for.
    stalled: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "uring-a",
        server: Server::Weir { driver: "uring" },
        shaped: true,
        global: false,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "uring-b",
        server: Server::Weir { driver: "uring" },
        shaped: true,
        global: true,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "epoll-a",
        server: Server::Weir { driver: "epoll" },
        shaped: true,
        global: false,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "epoll-b",
        server: Server::Weir { driver: "epoll" },
        shaped: true,
        global: true,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "nginx-a",
        server: Server::Nginx,
        shaped: true,
        global: false,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "nginx-b",
        server: Server::Nginx,
        shaped: true,
        global: true,
        paced: false,
        stalled: false,
    },
    Scenario {
        name: "uring-paced",
        server: Server::Weir { driver: "uring" },
        shaped: false,
        global: false,
        paced: true,
        stalled: false,
    },
    Scenario {
        name: "epoll-paced",
        server: Server::Weir { driver: "epoll" },
        shaped: false,
        global: false,
        paced: true,
        stalled: false,
    },
    Scenario {
        name: "nginx-paced",
        server: Server::Nginx,
        shaped: false,
        global: false,
        paced: true,
        stalled: false,
    },
    // Shaped server and paced client together: the client runs the same code as in the
    // "paced" runs, so both the server's CPU and the total compare like with like.
    Scenario {
        name: "uring-a-paced",
        server: Server::Weir { driver: "uring" },
        shaped: true,
        global: false,
        paced: true,
        stalled: false,
    },
    Scenario {
        name: "epoll-a-paced",
        server: Server::Weir { driver: "epoll" },
        shaped: true,
        global: false,
        paced: true,
        stalled: false,
    },
    Scenario {
        name: "nginx-a-paced",
        server: Server::Nginx,
        shaped: true,
        global: false,
        paced: true,
        stalled: false,
    },
    Scenario {
        name: "uring-stalled",
        server: Server::Weir { driver: "uring" },
        shaped: true,
        global: false,
        paced: true,
        stalled: true,
    },
    Scenario {
        name: "epoll-stalled",
        server: Server::Weir { driver: "epoll" },
        shaped: true,
        global: false,
        paced: true,
        stalled: true,
    },
    Scenario {
        name: "nginx-stalled",
        server: Server::Nginx,
        shaped: false,
        global: false,
        paced: true,
        stalled: true,
    },
];

/// Runs the scenarios named in `args` and writes `<out>/<scenario>.json` and `<out>/summary.json`.
pub fn run(args: Args) -> Result<()> {
    let chosen = choose(&args.scenarios)?;
    fs::create_dir_all(&args.out)?;
    let header = crate::report::Header::start("shaping", &args.weir);
    let prepared = prepare(&args)?;
    let mut summary = Vec::new();
    for sc in chosen {
        let r = measure(&args, &prepared, sc.name)?;
        fs::write(
            args.out.join(format!("{}.json", sc.name)),
            serde_json::to_string_pretty(&r)?,
        )?;
        summary.push(brief(r));
    }
    crate::report::write_simple(
        &args.out,
        header,
        "Shaping accuracy (issue 4)",
        &table(&summary),
        &format!(
            "{} users × {} connections, users at {} KiB/s, (b): a {} MiB/s global cap; {} s settle, {} s window. Raw: one JSON per scenario (per-user bytes, sockstat samples).\n",
            args.users, args.conns, args.user_kib, args.global_mib, args.settle_s, args.window_s
        ),
        &summary,
    )
}

/// The scenarios named in a comma-separated list, or all of them.
fn choose(names: &str) -> Result<Vec<Scenario>> {
    if names == "all" {
        return Ok(SCENARIOS.to_vec());
    }
    names
        .split(',')
        .map(|n| {
            SCENARIOS
                .iter()
                .find(|s| s.name == n)
                .copied()
                .with_context(|| format!("unknown scenario {n:?}"))
        })
        .collect()
}

/// The served file and weir's data directory, made once per work directory.
pub struct Prepared {
    file: PathBuf,
    data_dir: PathBuf,
}

/// Writes the served file and builds weir's data directory (reused when already there).
pub fn prepare(args: &Args) -> Result<Prepared> {
    fs::create_dir_all(&args.work_dir)?;
    let file = prepare_file(args)?;
    let data_dir = prepare_weir(args, &file)?;
    Ok(Prepared { file, data_dir })
}

/// Runs the scenario called `name` once; its full record (per-user bytes included).
pub fn measure(args: &Args, prepared: &Prepared, name: &str) -> Result<Value> {
    let sc = choose(name)?
        .into_iter()
        .next()
        .context("no scenario named")?;
    eprintln!("== {} (load: {})", sc.name, procfs::loadavg());
    let r = run_scenario(args, &sc, &prepared.file, &prepared.data_dir)
        .with_context(|| format!("scenario {}", sc.name))?;
    print_line(&r);
    Ok(r)
}

/// A record without its long per-user and per-sample arrays (what summaries keep).
pub fn brief(mut r: Value) -> Value {
    if let Some(o) = r.as_object_mut() {
        o.remove("per_user_bytes");
        o.remove("sockstat_samples");
    }
    r
}

/// One row per scenario: the accuracy figures and the server's costs.
pub fn table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut out = String::from(
        "| scenario | p1 | p50 | p99 | Jain | global | server CPU % | server CPU-s/GiB | total CPU-s/GiB | server socket KiB/conn | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.5} | {:.4} | {:.1} | {:.2} | {:.2} | {:.1} | {} |\n",
            r["scenario"].as_str().unwrap_or(""),
            f(r, "ratio_p1"),
            f(r, "ratio_p50"),
            f(r, "ratio_p99"),
            f(r, "jain"),
            f(r, "global_ratio"),
            f(r, "server_cpu_pct"),
            f(r, "server_cpu_s_per_gib"),
            f(r, "total_cpu_s_per_gib"),
            f(r, "server_sock_kib_per_conn"),
            r["errors"].as_u64().unwrap_or(0),
        );
    }
    out
}

/// Shaping runs repeated in rounds (`(variant, round, records)`): per variant and scenario the
/// server CPU-s/GiB of every round and their median, the worst accuracy and the global range;
/// then every shaped scenario against the unshaped (`DRIVER-paced`) run of the same round.
pub fn rounds_table(rounds: &[(String, String, Vec<Value>)]) -> String {
    use crate::util::median_or_nan;
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    for (variant, _, recs) in rounds {
        for r in recs {
            let k = (
                variant.clone(),
                r["scenario"].as_str().unwrap_or("").to_owned(),
            );
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let of = |variant: &str, sc: &str| -> Vec<(&str, &Value)> {
        rounds
            .iter()
            .filter(|(v, _, _)| v == variant)
            .filter_map(|(_, n, recs)| {
                recs.iter()
                    .find(|r| r["scenario"] == sc)
                    .map(|r| (n.as_str(), r))
            })
            .collect()
    };
    let mut out = String::from(
        "| variant | scenario | rounds | server CPU-s/GiB per round | median | worst p1 | worst p99 | global ratio range |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (variant, sc) in &keys {
        let rs = of(variant, sc);
        let cpu: Vec<f64> = rs
            .iter()
            .map(|(_, r)| f(r, "server_cpu_s_per_gib"))
            .collect();
        let g: Vec<f64> = rs.iter().map(|(_, r)| f(r, "global_ratio")).collect();
        out += &format!(
            "| {variant} | {sc} | {} | {} | {:.2} | {:.4} | {:.4} | {:.4}–{:.4} |\n",
            rs.len(),
            join(&cpu),
            median_or_nan(&cpu),
            rs.iter()
                .map(|(_, r)| f(r, "ratio_p1"))
                .fold(f64::INFINITY, f64::min),
            rs.iter()
                .map(|(_, r)| f(r, "ratio_p99"))
                .fold(f64::NEG_INFINITY, f64::max),
            g.iter().copied().fold(f64::INFINITY, f64::min),
            g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
    }
    let mut paired = String::new();
    for (variant, sc) in &keys {
        let Some(driver) = sc
            .strip_suffix("-a")
            .or_else(|| sc.strip_suffix("-a-paced"))
        else {
            continue;
        };
        let unshaped: Vec<(&str, &Value)> = of(variant, &format!("{driver}-paced"));
        let pairs: Vec<(&Value, &Value)> = of(variant, sc)
            .into_iter()
            .filter_map(|(n, a)| unshaped.iter().find(|(m, _)| *m == n).map(|(_, u)| (a, *u)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let ratios: Vec<f64> = pairs
            .iter()
            .map(|(a, u)| f(a, "server_cpu_s_per_gib") / f(u, "server_cpu_s_per_gib"))
            .collect();
        let total = |i: usize| {
            median_or_nan(
                &pairs
                    .iter()
                    .map(|p| f(if i == 0 { p.0 } else { p.1 }, "total_cpu_s_per_gib"))
                    .collect::<Vec<_>>(),
            )
        };
        paired += &format!(
            "| {variant} | {sc} vs {driver}-paced | {} | {} | {:.2} | {:.2} vs {:.2} |\n",
            pairs.len(),
            join(&ratios),
            median_or_nan(&ratios),
            total(0),
            total(1),
        );
    }
    if !paired.is_empty() {
        out += "\nShaped against unshaped (the client paces) in the same round:\n\n| variant | pair | rounds | server CPU-s/GiB shaped ÷ unshaped per round | median | total CPU-s/GiB shaped vs unshaped, medians |\n|---|---|---|---|---|---|\n";
        out += &paired;
    }
    out
}

/// The figures a before/after comparison reports per shaping scenario.
pub const COMPARED: [(&str, &str); 6] = [
    ("ratio_p1", "per-user ratio p1"),
    ("ratio_p50", "per-user ratio p50"),
    ("ratio_p99", "per-user ratio p99"),
    ("jain", "Jain index"),
    ("global_ratio", "global ratio"),
    ("server_cpu_s_per_gib", "server CPU-s/GiB"),
];

/// Several weir builds on the same shaping scenarios, alternating run by run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    /// Build names, the baseline first.
    pub builds: Vec<String>,
    /// Users, connections, rates, window: the reduced size that ran.
    pub size: String,
    pub scenarios: Vec<String>,
    /// One brief record per run, with `build` and `run` added.
    pub runs: Vec<Value>,
}

impl Comparison {
    /// Medians per build and scenario, and each build's median / the baseline's.
    pub fn table(&self) -> String {
        let Some(base) = self.builds.first() else {
            return String::new();
        };
        let mut out = format!("{}\n\n| scenario | figure |", self.size);
        for b in &self.builds {
            out += &format!(" {b} |");
        }
        for b in &self.builds[1..] {
            out += &format!(" {b} / {base} |");
        }
        out += " runs (all values) |\n|---|---|";
        out += &"---:|".repeat(2 * self.builds.len() - 1);
        out += "---|\n";
        for sc in &self.scenarios {
            for (key, label) in COMPARED {
                let values = |b: &str| -> Vec<f64> {
                    self.runs
                        .iter()
                        .filter(|r| r["build"] == b && r["scenario"] == sc.as_str())
                        .filter_map(|r| r[key].as_f64())
                        .collect()
                };
                let med = |b: &str| crate::util::median_or_nan(&values(b));
                out += &format!("| {sc} | {label} |");
                for b in &self.builds {
                    out += &format!(" {:.4} |", med(b));
                }
                for b in &self.builds[1..] {
                    out += &format!(" {:.3}× |", med(b) / med(base));
                }
                let all: Vec<String> = self
                    .builds
                    .iter()
                    .map(|b| {
                        let v: Vec<String> = values(b).iter().map(|x| format!("{x:.4}")).collect();
                        format!("{b}: {}", v.join(", "))
                    })
                    .collect();
                out += &format!(" {} |\n", all.join("; "));
            }
        }
        out
    }
}

fn print_line(r: &Value) {
    eprintln!(
        "{:<13} ratio p1 {:.4} p50 {:.4} p99 {:.4} jain {:.5} global {:.4} cpu {:.1}% CPU-s/GiB server {:.2} total {:.2} sockmem/conn {:.1} KiB (server-side {:.1} KiB) errors {}",
        r["scenario"].as_str().unwrap_or(""),
        r["ratio_p1"].as_f64().unwrap_or(f64::NAN),
        r["ratio_p50"].as_f64().unwrap_or(f64::NAN),
        r["ratio_p99"].as_f64().unwrap_or(f64::NAN),
        r["jain"].as_f64().unwrap_or(f64::NAN),
        r["global_ratio"].as_f64().unwrap_or(f64::NAN),
        r["server_cpu_pct"].as_f64().unwrap_or(f64::NAN),
        r["server_cpu_s_per_gib"].as_f64().unwrap_or(f64::NAN),
        r["total_cpu_s_per_gib"].as_f64().unwrap_or(f64::NAN),
        r["sockstat_kib_per_conn"].as_f64().unwrap_or(f64::NAN),
        r["server_sock_kib_per_conn"].as_f64().unwrap_or(f64::NAN),
        r["errors"].as_u64().unwrap_or(0),
    );
}

/// The served file: `file_mib` MiB of pseudo-random bytes, written once.
fn prepare_file(args: &Args) -> Result<PathBuf> {
    let path = args.work_dir.join("www").join("big");
    crate::fixture::ensure(&path, args.file_mib << 20, 0x5eed_0300)?;
    Ok(path)
}

fn user_name(i: usize) -> String {
    format!("u{i:03}")
}

fn password(i: usize) -> String {
    format!("pw-{i:03}-shaping")
}

/// weir's data dir with `users` users at `user_kib` KiB/s, the item `big` in every cart.
/// Reused when the marker file says it was built for the same user count.
fn prepare_weir(args: &Args, file: &Path) -> Result<PathBuf> {
    let dir = args.work_dir.join("weir-data");
    // The marker names the user count the data dir was built for: a run with another count
    // rebuilds it (one marker, so a rebuild for 100 users cannot leave a 200-user one behind).
    let marker = args.work_dir.join("weir-data.ready");
    let users = args.users.to_string();
    if fs::read_to_string(&marker).is_ok_and(|m| m == users) {
        return Ok(dir);
    }
    let _ = fs::remove_file(&marker);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let file = file.to_str().context("non-UTF-8 file path")?;
    admin(&args.weir, &dir, &["item", "add", "big", file], None)?;
    let rate = format!("{}KiB", args.user_kib);
    for i in 0..args.users {
        let u = user_name(i);
        admin(
            &args.weir,
            &dir,
            &["user", "add", &u, "--password-stdin", "--rate", &rate],
            Some(&password(i)),
        )?;
        admin(&args.weir, &dir, &["cart", "add", &u, "big"], None)?;
    }
    fs::write(&marker, users)?;
    fs::write(args.work_dir.join("weir-data.rate"), &rate)?;
    Ok(dir)
}

/// Sets every user's rate (`256KiB` or `unlimited`) unless the data dir already has it.
fn set_user_rates(args: &Args, data_dir: &Path, rate: &str) -> Result<()> {
    let rec = args.work_dir.join("weir-data.rate");
    if fs::read_to_string(&rec).ok().as_deref() == Some(rate) {
        return Ok(());
    }
    for i in 0..args.users {
        admin(
            &args.weir,
            data_dir,
            &["user", "set", &user_name(i), "--rate", rate],
            None,
        )?;
    }
    fs::write(&rec, rate)?;
    Ok(())
}

/// Starts weir for one scenario: `--global-rate` when `global` is given.
fn start_weir(
    args: &Args,
    data_dir: &Path,
    driver: &str,
    global: Option<String>,
    label: &str,
) -> Result<Running> {
    let mut a: Vec<String> = ["serve", "--data-dir"].map(String::from).to_vec();
    a.push(data_dir.to_string_lossy().into_owned());
    a.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &args.workers.to_string(),
            "--driver",
            driver,
            "--grace",
            "24h",
            "--max-connections",
            "20000",
            "--drain-timeout",
            "2s",
        ]
        .map(String::from),
    );
    if let Some(g) = global {
        a.extend(["--global-rate".to_owned(), g]);
    }
    let logs = args.work_dir.join("logs");
    fs::create_dir_all(&logs)?;
    serve(&args.weir, &a, &[("WEIR_LOG", "warn")], &logs, label)
}

/// Starts nginx serving the file's directory, with `limit_rate` when given.
fn start_nginx(args: &Args, file: &Path, limit_rate: Option<u64>, label: &str) -> Result<Running> {
    let root = file.parent().context("file without a directory")?;
    let logs = args.work_dir.join("logs");
    fs::create_dir_all(&logs)?;
    let mut setup = NginxSetup::create(&args.work_dir, root)?;
    setup.bin = args.nginx.clone();
    let opts = NginxOptions {
        limit_rate,
        workers: Some(args.workers),
        ..NginxOptions::default()
    };
    setup.start(&opts, &logs, label)
}

/// CPU seconds (user + system) of the server, nginx's workers included, of this process,
/// which is the client, and of the kernel's `ksoftirqd` threads (network work deferred out of
/// both), read when the window opens and when it closes.
#[derive(Clone, Copy)]
struct CpuUse {
    server_s: f64,
    client_s: f64,
    softirqd_s: f64,
}

impl CpuUse {
    fn now(server_pid: i32, softirqd: &[i32]) -> CpuUse {
        let mut pids = vec![server_pid];
        pids.extend(procfs::children(server_pid));
        CpuUse {
            server_s: procfs::cpu_seconds(&pids).unwrap_or(f64::NAN),
            client_s: procfs::cpu_seconds(&[std::process::id() as i32]).unwrap_or(f64::NAN),
            softirqd_s: procfs::cpu_seconds(softirqd).unwrap_or(f64::NAN),
        }
    }

    fn since(&self, start: &CpuUse) -> CpuUse {
        CpuUse {
            server_s: self.server_s - start.server_s,
            client_s: self.client_s - start.client_s,
            softirqd_s: self.softirqd_s - start.softirqd_s,
        }
    }
}

/// The kernel's TCP socket memory (/proc/net/sockstat `mem`), in bytes.
fn sockstat_tcp_mem_bytes() -> u64 {
    procfs::SockStat::read().map_or(0, |s| s.tcp_mem_pages * procfs::page_size())
}

/// Server-side sockets of one port, summed from `ss -tm`'s skmem.
#[derive(Clone, Copy, Default)]
struct SsSample {
    sockets: u64,
    /// rmem_alloc (`r`).
    r: u64,
    /// wmem_queued (`w`).
    w: u64,
    /// forward-allocated quota (`f`).
    f: u64,
    /// sk_sndbuf (`tb`).
    sndbuf: u64,
}

fn ss_server_side(port: u16) -> SsSample {
    let out = Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output();
    let Ok(out) = out else {
        return SsSample::default();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = SsSample::default();
    for part in text.split("skmem:(").skip(1) {
        let inner = part.split(')').next().unwrap_or("");
        s.sockets += 1;
        for kv in inner.split(',') {
            let key: String = kv.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            let val: u64 = kv[key.len()..].parse().unwrap_or(0);
            match key.as_str() {
                "r" => s.r += val,
                "w" => s.w += val,
                "f" => s.f += val,
                "tb" => s.sndbuf += val,
                _ => {}
            }
        }
    }
    s
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    // Nearest rank.
    let n = sorted.len();
    let r = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted[r.min(n) - 1]
}

fn run_scenario(args: &Args, sc: &Scenario, file: &Path, data_dir: &Path) -> Result<Value> {
    let user_bps = (args.user_kib * 1024) as f64;
    let global_bps = (args.global_mib << 20) as f64;
    let n_users = args.users;
    let fair_bps = if sc.global {
        (global_bps / n_users as f64).min(user_bps)
    } else {
        user_bps
    };
    let total_conns = n_users * args.conns;
    let server_desc;
    let server = match sc.server {
        Server::Weir { driver } => {
            set_user_rates(
                args,
                data_dir,
                &if sc.shaped {
                    format!("{}KiB", args.user_kib)
                } else {
                    "unlimited".into()
                },
            )?;
            let g = sc.global.then(|| format!("{}MiB", args.global_mib));
            server_desc = format!(
                "weir --driver {driver} --workers {} {}",
                args.workers,
                g.as_deref()
                    .map(|g| format!("--global-rate {g}"))
                    .unwrap_or_default()
            );
            start_weir(args, data_dir, driver, g, sc.name)?
        }
        Server::Nginx => {
            let lr = sc
                .shaped
                .then(|| (fair_bps / args.conns as f64).round() as u64);
            if let Some(l) = lr {
                server_desc = format!("nginx limit_rate {l}");
            } else {
                server_desc = "nginx (no limit_rate)".into();
            }
            start_nginx(args, file, lr, sc.name)?
        }
    };
    let addr = server.addr;
    let pid = server.pid();
    let softirqd = procfs::named("ksoftirqd/");
    let base_mem = sockstat_tcp_mem_bytes();
    let size = args.file_mib << 20;
    let slice = size / args.conns as u64;

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(total_conns);
    let path = match sc.server {
        Server::Weir { .. } => "/d/big",
        Server::Nginx => "/big",
    };
    for u in 0..n_users {
        let auth = basic_auth(&user_name(u), &password(u));
        for j in 0..args.conns {
            let (a, b) = (j as u64 * slice, (j as u64 + 1) * slice - 1);
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nRange: bytes={a}-{b}\r\n\r\n"
            )
            .into_bytes();
            let mut stream = TcpStream::connect(addr)?;
            poll.registry().register(
                &mut stream,
                Token(conns.len()),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns.push(Conn {
                stream,
                user: u,
                request,
                state: State::Connecting,
                head: Vec::new(),
                body: 0,
                readable: false,
            });
        }
    }
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Client pacing (paced scenarios): per-user tokens, refilled each tick, round-robin cursor.
    let mut tokens = vec![0f64; n_users];
    let mut cursor = vec![0usize; n_users];
    let tick = Duration::from_millis(5);
    let mut last_tick = Instant::now();
    let start = Instant::now();
    let mut heads_done_at: Option<Instant> = None;
    let mut window: Option<(Instant, Vec<u64>, CpuUse)> = None;
    let mut mem_samples: Vec<u64> = Vec::new();
    let mut next_sample = Instant::now();
    let mut ss_sample: Option<SsSample> = None;
    let mut in_body = 0usize;
    let result;
    loop {
        let timeout = if sc.paced {
            tick.saturating_sub(last_tick.elapsed())
        } else {
            Duration::from_millis(50)
        };
        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if c.state == State::Connecting && ev.is_writable() {
                if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                    *errors.entry(format!("connect {:?}", e.kind())).or_default() += 1;
                    c.state = State::Dead;
                    continue;
                }
                if c.stream.peer_addr().is_err() {
                    continue; // not connected yet
                }
                // The request is small: one write fits a fresh socket's buffer.
                match c.stream.write(&c.request) {
                    Ok(n) if n == c.request.len() => {
                        c.state = State::Head;
                        poll.registry().reregister(
                            &mut c.stream,
                            ev.token(),
                            Interest::READABLE,
                        )?;
                    }
                    r => {
                        *errors.entry(format!("write {r:?}")).or_default() += 1;
                        c.state = State::Dead;
                    }
                }
            }
            if ev.is_readable() && matches!(c.state, State::Head | State::Body) {
                c.readable = true;
                let was_head = c.state == State::Head;
                if !sc.paced || was_head {
                    // Unpaced: drain. Paced: read the head now, body bytes count against tokens.
                    let lim = if sc.paced { 16 * 1024 } else { usize::MAX };
                    let got = read_conn(c, &mut buf, lim, &mut errors);
                    if sc.paced {
                        tokens[c.user] -= got as f64;
                    }
                }
                if was_head && c.state == State::Body {
                    in_body += 1;
                }
            }
        }
        if sc.paced && last_tick.elapsed() >= tick {
            let now = Instant::now();
            let dt = now.duration_since(last_tick).as_secs_f64();
            last_tick = now;
            for u in 0..n_users {
                // Burst cap: 50 ms of the rate, so an idle stretch is not caught up later.
                let client_bps = if sc.stalled { 0.0 } else { user_bps };
                tokens[u] = (tokens[u] + client_bps * dt).min(client_bps * 0.05);
                let base = u * args.conns;
                let mut tried = 0;
                while tokens[u] >= 1.0 && tried < args.conns {
                    let k = base + cursor[u];
                    cursor[u] = (cursor[u] + 1) % args.conns;
                    tried += 1;
                    let c = &mut conns[k];
                    if c.readable && c.state == State::Body {
                        let got = read_conn(c, &mut buf, tokens[u] as usize, &mut errors);
                        tokens[u] -= got as f64;
                    }
                }
            }
        }
        let now = Instant::now();
        if heads_done_at.is_none() {
            for (k, c) in conns.iter_mut().enumerate() {
                if matches!(c.state, State::Retry(t) if t <= now) {
                    poll.registry().deregister(&mut c.stream)?;
                    c.stream = TcpStream::connect(addr)?;
                    poll.registry().register(
                        &mut c.stream,
                        Token(k),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    c.state = State::Connecting;
                }
            }
        }
        let dead = conns.iter().filter(|c| c.state == State::Dead).count();
        if heads_done_at.is_none() {
            if in_body + dead >= total_conns {
                heads_done_at = Some(now);
                eprintln!(
                    "  all heads after {:.1} s ({dead} dead)",
                    start.elapsed().as_secs_f64()
                );
            } else if start.elapsed() > Duration::from_secs(120) {
                bail!("only {in_body} of {total_conns} connections got a head in 120 s; errors {errors:?}");
            }
        }
        if let Some(h) = heads_done_at {
            if window.is_none() && now.duration_since(h) >= Duration::from_secs(args.settle_s) {
                let snap: Vec<u64> = conns.iter().map(|c| c.body).collect();
                window = Some((Instant::now(), snap, CpuUse::now(pid, &softirqd)));
                next_sample = now;
            }
        }
        if let Some((w0, ref snap, ref cpu0)) = window {
            if now >= next_sample {
                mem_samples.push(sockstat_tcp_mem_bytes());
                next_sample += Duration::from_secs(1);
                if ss_sample.is_none()
                    && now.duration_since(w0) >= Duration::from_secs(args.window_s / 2)
                {
                    ss_sample = Some(ss_server_side(addr.port()));
                }
            }
            if now.duration_since(w0) >= Duration::from_secs(args.window_s) {
                let cpu1 = CpuUse::now(pid, &softirqd);
                let secs = now.duration_since(w0).as_secs_f64();
                let mut per_user = vec![0u64; n_users];
                for (c, s0) in conns.iter().zip(snap) {
                    per_user[c.user] += c.body - s0;
                }
                result = finish(
                    args,
                    sc,
                    &server_desc,
                    secs,
                    per_user,
                    fair_bps,
                    user_bps,
                    global_bps,
                    cpu1.since(cpu0),
                    base_mem,
                    &mem_samples,
                    ss_sample,
                    total_conns,
                    dead,
                    &errors,
                );
                break;
            }
        }
    }
    for c in conns.iter_mut() {
        let _ = poll.registry().deregister(&mut c.stream);
    }
    drop(conns);
    server.stop(Duration::from_secs(20))?;
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    args: &Args,
    sc: &Scenario,
    server_desc: &str,
    secs: f64,
    per_user: Vec<u64>,
    fair_bps: f64,
    user_bps: f64,
    global_bps: f64,
    cpu: CpuUse,
    base_mem: u64,
    mem_samples: &[u64],
    ss: Option<SsSample>,
    total_conns: usize,
    dead: usize,
    errors: &HashMap<String, u64>,
) -> Value {
    let ratios: Vec<f64> = per_user
        .iter()
        .map(|&b| b as f64 / secs / fair_bps)
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let sum: f64 = ratios.iter().sum();
    let sumsq: f64 = ratios.iter().map(|r| r * r).sum();
    let jain = sum * sum / (ratios.len() as f64 * sumsq);
    let total: u64 = per_user.iter().sum();
    let global_bps_measured = total as f64 / secs;
    let expected_global = if sc.global {
        global_bps.min(user_bps * args.users as f64)
    } else {
        user_bps * args.users as f64
    };
    let mut ms = mem_samples.to_vec();
    ms.sort_unstable();
    let med_mem = ms.get(ms.len() / 2).copied().unwrap_or(0);
    let ss = ss.unwrap_or_default();
    let ss_n = ss.sockets;
    let per_sock_kib = |v: u64| {
        if ss_n > 0 {
            v as f64 / ss_n as f64 / 1024.0
        } else {
            f64::NAN
        }
    };
    let gib = total as f64 / (1u64 << 30) as f64;
    let per_gib = |s: f64| if gib > 0.0 { s / gib } else { f64::NAN };
    json!({
        "scenario": sc.name,
        "server": server_desc,
        "paced_by_client": sc.paced,
        "client_stalled": sc.stalled,
        "users": args.users,
        "conns_per_user": args.conns,
        "connections": total_conns,
        "dead_connections": dead,
        "errors": errors.iter().filter(|(k, _)| !k.starts_with("retried")).map(|(_, v)| v).sum::<u64>(),
        "retries_503": errors.get("retried after 503").copied().unwrap_or(0),
        "errors_by_kind": errors,
        "window_s": secs,
        "expected_per_user_bps": fair_bps,
        "ratio_min": sorted[0],
        "ratio_p1": pct(&sorted, 1.0),
        "ratio_p50": pct(&sorted, 50.0),
        "ratio_p99": pct(&sorted, 99.0),
        "ratio_max": sorted[sorted.len() - 1],
        "jain": jain,
        "global_bps": global_bps_measured,
        "global_expected_bps": expected_global,
        "global_ratio": global_bps_measured / expected_global,
        "server_cpu_s": cpu.server_s,
        "server_cpu_pct": 100.0 * cpu.server_s / secs,
        "server_cpu_s_per_gib": per_gib(cpu.server_s),
        "client_cpu_s": cpu.client_s,
        "client_cpu_s_per_gib": per_gib(cpu.client_s),
        "softirqd_cpu_s": cpu.softirqd_s,
        "total_cpu_s_per_gib": per_gib(cpu.server_s + cpu.client_s + cpu.softirqd_s),
        "sockstat_baseline_bytes": base_mem,
        "sockstat_median_bytes": med_mem,
        "sockstat_kib_per_conn": (med_mem as f64 - base_mem as f64) / total_conns as f64 / 1024.0,
        "server_sockets_seen": ss_n,
        "server_sock_kib_per_conn": per_sock_kib(ss.r + ss.w + ss.f),
        "server_sock_rmem_alloc_kib": per_sock_kib(ss.r),
        "server_sock_wmem_queued_kib": per_sock_kib(ss.w),
        "server_sock_fwd_alloc_kib": per_sock_kib(ss.f),
        "server_sndbuf_kib_mean": per_sock_kib(ss.sndbuf),
        "loadavg_end": crate::procfs::loadavg(),
        "per_user_bytes": per_user,
        "sockstat_samples": mem_samples,
    })
}
