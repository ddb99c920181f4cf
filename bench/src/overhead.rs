//! Accounting overhead (issue 3): what completion accounting costs weir in throughput and in
//! server CPU, measured with `weir-load forty` against the same release build with accounting on
//! and with `--no-accounting`, alternating on/off run by run so that load from other users of the
//! machine hits both sides alike.
//!
//! Every run starts a fresh `weir serve` (same data dir, carts refilled first, `--grace 24h` so a
//! completed item stays downloadable), waits for its `listening on http://` line, samples the
//! server's utime+stime from `/proc/PID/stat`, runs the load, samples again and stops the server
//! with SIGTERM. Cost = 1 − on/off for goodput and on/off − 1 for CPU seconds per GiB delivered.
//! Raw per-run JSON goes to `OUT/runs.json`, weir-load's own results to `OUT/raw/`; the table of
//! medians, the command and the machine to `OUT/README.md` and `OUT/summary.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::servers::weir::{admin, serve};
use crate::util::{median_or_nan, parse_secs};

/// `weir-bench overhead` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Results directory (runs.json, table.md, env.txt, raw/).
    #[arg(long)]
    pub out: PathBuf,
    /// Scratch directory for the data dir and the test files (reused if the files exist).
    #[arg(long, default_value = "/tmp/weir-bench-overhead")]
    pub work: PathBuf,
    /// The weir binary (release build).
    #[arg(long, default_value = "target/release/weir")]
    pub weir: PathBuf,
    /// The weir-load binary (release build).
    #[arg(long, default_value = "target/release/weir-load")]
    pub weir_load: PathBuf,
    /// Timed runs per side (accounting on, off) and case.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Length of one load run.
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    pub duration: Duration,
    /// File sizes in MiB, one case each (1024 = 1 GiB, 64).
    #[arg(long, value_delimiter = ',', default_value = "1024,64")]
    pub files_mib: Vec<u64>,
    /// Simulated users per run, one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub users: Vec<usize>,
    /// Ranged connections per user.
    #[arg(long, default_value_t = 40)]
    pub connections: usize,
    /// weir serve --workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// During each run (both sides), `weir cart add` every user's item this often, so a user who
    /// completed buys again and the next download is accounted too. Without it, a user's first
    /// completion empties the cart and the rest of the run only exercises the ignored-credit path.
    #[arg(long, value_parser = parse_secs)]
    pub repurchase_every: Option<Duration>,
}

/// One timed run, as stored in runs.json (fields added later default when reading old runs).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Run {
    pub file_mib: u64,
    pub users: usize,
    pub accounting: bool,
    pub run: usize,
    pub goodput_bytes_per_sec: f64,
    pub bytes: u64,
    pub downloads_completed: u64,
    pub errors_total: u64,
    /// "download completed" lines in the server's log: completions the ledger committed.
    pub completions: usize,
    pub repurchase_every_s: Option<f64>,
    pub server_cpu_s: f64,
    pub cpu_s_per_gib: f64,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub raw: String,
}

/// Run the benchmark and write its results under `args.out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let max_users = *args.users.iter().max().context("--users is empty")?;
    std::fs::create_dir_all(args.out.join("raw"))?;
    std::fs::create_dir_all(&args.work)?;
    let header = crate::report::Header::start("overhead", &args.weir);

    let data = args.work.join("data");
    let fresh = !data.join(".bench-ready").exists();
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    let creds = args.work.join("credentials.txt");
    let users: Vec<String> = (1..=max_users).map(|i| format!("u{i}")).collect();
    let password = "bench-password";
    let mut items = Vec::new();
    for &mib in &args.files_mib {
        let id = format!("f{mib}m");
        let file = args.work.join(&id);
        crate::fixture::ensure(&file, mib << 20, 0x5eed_0100 + mib)?;
        items.push((mib, id, file));
    }
    if fresh {
        for u in &users {
            admin(
                &args.weir,
                &data,
                &["user", "add", u, "--password-stdin"],
                Some(password),
            )?;
        }
        for (_, id, file) in &items {
            let file = file.to_str().context("non-UTF-8 path")?;
            admin(&args.weir, &data, &["item", "add", id, file], None)?;
        }
        std::fs::write(data.join(".bench-ready"), b"")?;
    }
    let lines: String = users.iter().map(|u| format!("{u}:{password}\n")).collect();
    std::fs::write(&creds, lines)?;

    let mut runs = Vec::new();
    for (mib, id, _) in &items {
        for &u in &args.users {
            for r in 1..=args.runs {
                // on, off on odd runs; off, on on even ones.
                let order = if r % 2 == 1 {
                    [true, false]
                } else {
                    [false, true]
                };
                for accounting in order {
                    for user in &users {
                        // Completion empties the cart; refill it so every run starts alike.
                        let _ = admin(&args.weir, &data, &["cart", "add", user, id], None);
                    }
                    let one = one_run(&args, &data, &creds, *mib, id, &users[..u], accounting, r)?;
                    eprintln!(
                        "{mib} MiB x{u} accounting={accounting} run {r}: {:.0} MB/s, {:.3} CPU-s/GiB, {} errors, {} completions",
                        one.goodput_bytes_per_sec / 1e6,
                        one.cpu_s_per_gib,
                        one.errors_total,
                        one.completions
                    );
                    runs.push(one);
                    std::fs::write(
                        args.out.join("runs.json"),
                        serde_json::to_string_pretty(&runs)?,
                    )?;
                }
            }
        }
    }
    crate::report::write_simple(
        &args.out,
        header,
        "Accounting overhead: weir with completion accounting on vs --no-accounting (issue 3)",
        &table(&runs),
        "Raw: `runs.json` (one record per timed run), weir-load's own results and the server logs in `raw/`.\n",
        &runs,
    )
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    args: &Args,
    data: &Path,
    creds: &Path,
    mib: u64,
    id: &str,
    user_names: &[String],
    accounting: bool,
    r: usize,
) -> anyhow::Result<Run> {
    let users = user_names.len();
    let mut serve_args: Vec<String> = ["serve", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    serve_args.push(data.to_string_lossy().into_owned());
    for a in ["--listen", "127.0.0.1:0", "--grace", "24h", "--workers"] {
        serve_args.push(a.to_owned());
    }
    serve_args.push(args.workers.to_string());
    if !accounting {
        serve_args.push("--no-accounting".to_owned());
    }
    let name = format!(
        "{mib}m-u{users}-{}-{r}",
        if accounting { "on" } else { "off" }
    );
    let raw = args.out.join("raw").join(&name);
    let _ = std::fs::remove_dir_all(&raw);
    let log_dir = args.out.join("raw");
    let weir = serve(&args.weir, &serve_args, &[], &log_dir, &name)?;
    let url = format!("http://{}/d/{id}", weir.addr);
    let load_before = crate::procfs::loadavg();
    let cpu_before = crate::procfs::cpu_seconds(&weir.pids())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let buyer = args.repurchase_every.map(|every| {
        let (stop, weir_bin, data) = (stop.clone(), args.weir.clone(), data.to_path_buf());
        let (names, id) = (user_names.to_vec(), id.to_string());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(every);
                for u in &names {
                    let _ = admin(&weir_bin, &data, &["cart", "add", u, &id], None);
                }
            }
        })
    });
    let status = std::process::Command::new(&args.weir_load)
        .args(["forty", &url, "--users", &users.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .args(["--duration", &format!("{}s", args.duration.as_secs_f64())])
        .arg("--credentials-file")
        .arg(creds)
        .arg("--out")
        .arg(&raw)
        .arg("--no-progress")
        .stdout(std::process::Stdio::null())
        .status()
        .context("running weir-load");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(b) = buyer {
        let _ = b.join();
    }
    let status = status?;
    let cpu_after = crate::procfs::cpu_seconds(&weir.pids())?;
    let load_after = crate::procfs::loadavg();
    weir.stop(Duration::from_secs(15))?;
    if !status.success() {
        bail!("weir-load forty failed ({status}) for {name}");
    }
    let s = crate::loadgen_bench::read_summary(&raw)?;
    let bytes = s["bytes"].as_u64().unwrap_or(0);
    let errors_total = s["errors_total"].as_u64().unwrap_or(0);
    if bytes == 0 {
        bail!("{name}: no bytes delivered (errors: {})", s["errors"]);
    }
    let server_cpu_s = cpu_after - cpu_before;
    let completions = ["stdout", "stderr"]
        .iter()
        .map(|ext| std::fs::read_to_string(raw.with_extension(ext)).unwrap_or_default())
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("download completed"))
                .count()
        })
        .sum();
    Ok(Run {
        file_mib: mib,
        users,
        accounting,
        run: r,
        goodput_bytes_per_sec: s["goodput_bytes_per_sec"].as_f64().unwrap_or(0.0),
        bytes,
        downloads_completed: s["downloads_completed"].as_u64().unwrap_or(0),
        errors_total,
        completions,
        repurchase_every_s: args.repurchase_every.map(|d| d.as_secs_f64()),
        server_cpu_s,
        cpu_s_per_gib: server_cpu_s / (bytes as f64 / (1u64 << 30) as f64),
        loadavg_before: load_before,
        loadavg_after: load_after,
        raw: format!("raw/{name}"),
    })
}

/// Medians per case and side, and the cost of accounting.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| file | users × conns | runs on/off | goodput on (MB/s) | goodput off (MB/s) | throughput cost 1 − on/off | CPU-s/GiB on | CPU-s/GiB off | CPU cost on/off − 1 | paired by run: throughput / CPU cost, medians | completions on (median) | errors on/off |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut cases: Vec<(u64, usize)> = runs.iter().map(|r| (r.file_mib, r.users)).collect();
    cases.dedup();
    cases.sort_unstable();
    cases.dedup();
    for (mib, users) in cases {
        let side = |acc: bool| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.file_mib == mib && r.users == users && r.accounting == acc)
                .collect()
        };
        let (on, off) = (side(true), side(false));
        let m = |v: &[&Run], f: fn(&Run) -> f64| {
            median_or_nan(&v.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let (g_on, g_off) = (
            m(&on, |r| r.goodput_bytes_per_sec),
            m(&off, |r| r.goodput_bytes_per_sec),
        );
        let (c_on, c_off) = (m(&on, |r| r.cpu_s_per_gib), m(&off, |r| r.cpu_s_per_gib));
        let errs = |v: &[&Run]| v.iter().map(|r| r.errors_total).sum::<u64>();
        // Run r with accounting against run r without: the same moment of a drifting machine.
        let pairs: Vec<(&Run, &Run)> = on
            .iter()
            .filter_map(|a| off.iter().find(|b| b.run == a.run).map(|b| (*a, *b)))
            .collect();
        let paired = |f: fn(&Run, &Run) -> f64| {
            median_or_nan(&pairs.iter().map(|(a, b)| f(a, b)).collect::<Vec<_>>()) * 100.0
        };
        let paired_tput = paired(|a, b| 1.0 - a.goodput_bytes_per_sec / b.goodput_bytes_per_sec);
        let paired_cpu = paired(|a, b| a.cpu_s_per_gib / b.cpu_s_per_gib - 1.0);
        out += &format!(
            "| {} | {users} × 40 | {}/{} | {:.0} | {:.0} | {:+.1}% | {:.3} | {:.3} | {:+.1}% | {paired_tput:+.1}% / {paired_cpu:+.1}% | {} | {}/{} |\n",
            if mib >= 1024 { format!("{} GiB", mib / 1024) } else { format!("{mib} MiB") },
            on.len(),
            off.len(),
            g_on / 1e6,
            g_off / 1e6,
            (1.0 - g_on / g_off) * 100.0,
            c_on,
            c_off,
            (c_on / c_off - 1.0) * 100.0,
            m(&on, |r| r.completions as f64),
            errs(&on),
            errs(&off),
        );
    }
    out
}
