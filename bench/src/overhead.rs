//! Accounting overhead (issue 3): what completion accounting costs weir in throughput and in
//! server CPU, measured with `weir-load forty` against the same release build with accounting on
//! and with `--no-accounting`, alternating on/off run by run so that load from other users of the
//! machine hits both sides alike.
//!
//! Every run starts a fresh `weir serve` (same data dir, carts refilled first, `--grace 24h` so a
//! completed item stays downloadable), waits for its `listening on http://` line, samples the
//! server's utime+stime from `/proc/PID/stat`, runs the load, samples again and stops the server
//! with SIGTERM. Cost = 1 − on/off for goodput and on/off − 1 for CPU seconds per GiB delivered.
//! Raw per-run JSON goes to `OUT/runs.json`, weir-load's own results to `OUT/raw/`, the table of
//! medians to `OUT/table.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use procs::{median, Weir};

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
    #[arg(long, default_value = "15s", value_parser = procs::parse_secs)]
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
    #[arg(long, value_parser = procs::parse_secs)]
    pub repurchase_every: Option<Duration>,
}

/// One timed run, as stored in runs.json.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    file_mib: u64,
    users: usize,
    accounting: bool,
    run: usize,
    goodput_bytes_per_sec: f64,
    bytes: u64,
    downloads_completed: u64,
    errors_total: u64,
    /// "download completed" lines in the server's log: completions the ledger committed.
    completions: usize,
    repurchase_every_s: Option<f64>,
    server_cpu_s: f64,
    cpu_s_per_gib: f64,
    loadavg_before: String,
    loadavg_after: String,
    raw: String,
}

/// Run the benchmark and write its results under `args.out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let max_users = *args.users.iter().max().context("--users is empty")?;
    std::fs::create_dir_all(args.out.join("raw"))?;
    std::fs::create_dir_all(&args.work)?;
    procs::write_env(&args.out.join("env.txt"), &args.weir, &args.weir_load)?;

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
        procs::ensure_file(&file, mib << 20)?;
        items.push((mib, id, file));
    }
    if fresh {
        for u in &users {
            procs::weir_admin(
                &args.weir,
                &data,
                &["user", "add", u, "--password-stdin"],
                Some(password),
            )?;
        }
        for (_, id, file) in &items {
            let file = file.to_str().context("non-UTF-8 path")?;
            procs::weir_admin(&args.weir, &data, &["item", "add", id, file], None)?;
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
                        let _ =
                            procs::weir_admin(&args.weir, &data, &["cart", "add", user, id], None);
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
    let table = table(&runs);
    std::fs::write(args.out.join("table.md"), &table)?;
    println!("{table}");
    Ok(())
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
    let mut extra = vec!["--grace", "24h"];
    if !accounting {
        extra.push("--no-accounting");
    }
    let name = format!(
        "{mib}m-u{users}-{}-{r}",
        if accounting { "on" } else { "off" }
    );
    let raw = args.out.join("raw").join(&name);
    let _ = std::fs::remove_dir_all(&raw);
    let weir = Weir::start(
        &args.weir,
        data,
        args.workers,
        &extra,
        &raw.with_extension("log"),
    )?;
    let url = format!("http://{}/d/{id}", weir.addr);
    let load_before = procs::loadavg();
    let cpu_before = procs::cpu_seconds(weir.pid())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let buyer = args.repurchase_every.map(|every| {
        let (stop, weir_bin, data) = (stop.clone(), args.weir.clone(), data.to_path_buf());
        let (names, id) = (user_names.to_vec(), id.to_string());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(every);
                for u in &names {
                    let _ = procs::weir_admin(&weir_bin, &data, &["cart", "add", u, &id], None);
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
    let cpu_after = procs::cpu_seconds(weir.pid())?;
    let load_after = procs::loadavg();
    weir.stop()?;
    if !status.success() {
        bail!("weir-load forty failed ({status}) for {name}");
    }
    let s = procs::read_summary(&raw)?;
    let bytes = s["bytes"].as_u64().unwrap_or(0);
    let errors_total = s["errors_total"].as_u64().unwrap_or(0);
    if bytes == 0 {
        bail!("{name}: no bytes delivered (errors: {})", s["errors"]);
    }
    let server_cpu_s = cpu_after - cpu_before;
    let log = std::fs::read_to_string(raw.with_extension("log")).unwrap_or_default();
    let completions = log
        .lines()
        .filter(|l| l.contains("download completed"))
        .count();
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
fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| file | users × conns | runs on/off | goodput on (MB/s) | goodput off (MB/s) | throughput cost 1 − on/off | CPU-s/GiB on | CPU-s/GiB off | CPU cost on/off − 1 | completions on (median) | errors on/off |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
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
        let m = |v: &[&Run], f: fn(&Run) -> f64| median(v.iter().map(|r| f(r)).collect());
        let (g_on, g_off) = (
            m(&on, |r| r.goodput_bytes_per_sec),
            m(&off, |r| r.goodput_bytes_per_sec),
        );
        let (c_on, c_off) = (m(&on, |r| r.cpu_s_per_gib), m(&off, |r| r.cpu_s_per_gib));
        let errs = |v: &[&Run]| v.iter().map(|r| r.errors_total).sum::<u64>();
        out += &format!(
            "| {} | {users} × 40 | {}/{} | {:.0} | {:.0} | {:+.1}% | {:.3} | {:.3} | {:+.1}% | {} | {}/{} |\n",
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

/// Driving the processes a benchmark needs: weir, nginx, files, /proc samples. Shared with
/// [`crate::loadgen_bench`].
pub mod procs {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use anyhow::{bail, Context as _};

    /// Parse `15s`, `1.5s`, `250ms`, `2m`.
    pub fn parse_secs(s: &str) -> Result<Duration, String> {
        let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0)
        } else {
            (s, 1.0)
        };
        let v: f64 = num.parse().map_err(|e| format!("{s}: {e}"))?;
        Ok(Duration::from_secs_f64(v * mul))
    }

    /// Median of the values (mean of the middle two for an even count); NaN when empty.
    pub fn median(mut v: Vec<f64>) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// Create `path` with `size` incompressible bytes (xorshift64) unless it already has that size.
    pub fn ensure_file(path: &Path, size: u64) -> anyhow::Result<()> {
        if std::fs::metadata(path)
            .map(|m| m.len() == size)
            .unwrap_or(false)
        {
            return Ok(());
        }
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size;
        let mut left = size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            for chunk in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
        Ok(())
    }

    /// Run `weir ARGS --data-dir DATA`, feeding `stdin` if given; fail with its stderr.
    pub fn weir_admin(
        weir: &Path,
        data: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut child = Command::new(weir)
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", weir.display()))?;
        {
            let mut pipe = child.stdin.take().context("stdin")?;
            if let Some(s) = stdin {
                writeln!(pipe, "{s}")?;
            }
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "weir {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A `weir serve` we started; stopped with SIGTERM to its PID (and killed if dropped).
    pub struct Weir {
        child: Child,
        /// The bound address, from the `listening on http://ADDR` line.
        pub addr: String,
    }

    impl Weir {
        /// Start `weir serve` on a free loopback port and wait for its readiness line.
        /// Its stdout and stderr go to `log`.
        pub fn start(
            weir: &Path,
            data: &Path,
            workers: usize,
            extra: &[&str],
            log: &Path,
        ) -> anyhow::Result<Weir> {
            let err = std::fs::File::create(log)?;
            let mut child = Command::new(weir)
                .arg("serve")
                .arg("--data-dir")
                .arg(data)
                .args(["--listen", "127.0.0.1:0", "--workers", &workers.to_string()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(err)
                .spawn()
                .context("starting weir serve")?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut lines = BufReader::new(stdout);
            let mut logf = std::fs::OpenOptions::new().append(true).open(log)?;
            let mut line = String::new();
            let addr = loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    let _ = child.wait();
                    bail!("weir serve exited before listening; see {}", log.display());
                }
                logf.write_all(line.as_bytes())?;
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    break rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
            };
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut rest = lines;
                let mut buf = [0u8; 8192];
                while let Ok(n) = rest.read(&mut buf) {
                    if n == 0 || logf.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            Ok(Weir { child, addr })
        }

        /// The server's PID.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// SIGTERM and wait for exit.
        pub fn stop(mut self) -> anyhow::Result<()> {
            terminate(&mut self.child)
        }
    }

    impl Drop for Weir {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM to this child's PID (never by name), then wait for it.
    pub fn terminate(child: &mut Child) -> anyhow::Result<()> {
        if child.try_wait()?.is_none() {
            let pid = libc::pid_t::try_from(child.id())?;
            // SAFETY: kill(2) takes no pointers; `pid` is our own child, not yet reaped (try_wait
            // returned None), so the PID cannot have been reused by another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        child.wait()?;
        Ok(())
    }

    /// utime + stime of a process (all its threads), in seconds, from /proc/PID/stat.
    pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces; fields resume after its closing parenthesis.
        let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf takes no pointers and has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(ticks as f64 / hz as f64)
    }

    /// The first three fields of /proc/loadavg (what `uptime` prints).
    pub fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// weir-load's summary.json in `dir`.
    pub fn read_summary(dir: &Path) -> anyhow::Result<serde_json::Value> {
        let p = dir.join("summary.json");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(serde_json::from_str(&s)?)
    }

    /// First line of a command's stdout+stderr, or "unavailable".
    pub fn version(cmd: &str, args: &[&str]) -> String {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s += &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|| "unavailable".into())
    }

    /// Versions and machine, once per benchmark: env.txt beside the results.
    pub fn write_env(path: &Path, weir: &Path, weir_load: &Path) -> anyhow::Result<()> {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(str::to_string))
            .unwrap_or_default();
        let exe = |p: &PathBuf| p.to_string_lossy().into_owned();
        let text = format!(
            "weir git rev: {}\nweir: {}\nweir-load: {}\nnginx: {}\nwrk: {}\naxel: {}\nkernel: {}\nrustc: {}\nnproc: {}\n{mem}\nloadavg at start: {}\n",
            version("git", &["rev-parse", "HEAD"]),
            version(&exe(&weir.to_path_buf()), &["--version"]),
            version(&exe(&weir_load.to_path_buf()), &["--version"]),
            version("nginx", &["-v"]),
            version("wrk", &["-v"]),
            version("axel", &["-V"]),
            version("uname", &["-r"]),
            version("rustc", &["-V"]),
            version("nproc", &[]),
            loadavg(),
        );
        std::fs::write(path, text)?;
        Ok(())
    }
}
