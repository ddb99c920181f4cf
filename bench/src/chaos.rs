//! `weir-bench chaos`: SIGKILL weir at random moments while users download with resuming
//! clients, and count completions lost, duplicated and false, and webhook deliveries per
//! completion (issue 14).
//!
//! The run: a data dir with U users, each with the item in the cart (a *purchase*: user, item,
//! the cart row's `added_at`), a webhook receiver on loopback that records every POST's
//! `Idempotency-Key` and body, `weir serve --webhook` (its own session, by PID), and
//! `weir-load forty` (U users x K connections, `--sha256`, resuming from the bytes each user
//! holds, `--events` per finished download, `--gate` per next download). A per-user rate
//! (`--default-rate`) makes downloads span the kills. At N moments drawn from a seeded RNG
//! (the seed is printed and recorded) weir gets SIGKILL and is started again on the same address
//! and data dir (ready when it prints `listening on`).
//!
//! Repeat purchases: when a user's client has every byte (an `--events` record), the harness
//! waits until the purchase leaves the cart (weir recorded its completion), puts the item back
//! (a new purchase) and opens the user's gate for the next download. A purchase still in the
//! cart `--completion-timeout` after its client finished is replaced (`cart remove`, `cart add`)
//! so that user goes on; it counts as LOST unless a completion shows up for it anyway.
//!
//! At the end weir is stopped with SIGTERM, started once more (a clean restart) and the harness
//! waits until the ledger is idle: every history row has its webhook key and the history no
//! longer changes. Then, per purchase: client completed (every byte, hash ok), completions
//! recorded (`weir history --json` rows, assigned to the purchase whose `added_at` precedes them)
//! and distinct webhook keys:
//!
//! - LOST: the client finished, no completion;
//! - DUPLICATED: more than one history row or more than one webhook key;
//! - FALSE: a completion for a purchase whose client did not hold every byte;
//! - webhook missing: a completion without a delivered key. Redeliveries of one key (at least
//!   once, after a kill) are counted but are not duplicates.
//!
//! Only the PIDs this process started are signalled.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_load::downloads::{DownloadLog, Gate};

use crate::child::{render, signal};
use crate::servers::weir::{admin, serve};
use crate::servers::Running;

/// Item id of the file every user buys.
const ITEM: &str = "chaos";

/// `weir-bench chaos` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// SIGKILL cycles (each followed by a restart on the same address and data dir)
    #[arg(long, default_value_t = 20)]
    pub cycles: usize,
    /// Users (U), each buying the item again whenever a download finished
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    /// Ranged connections per user (K)
    #[arg(long, default_value_t = 40)]
    pub connections: usize,
    /// Size of the item in MiB
    #[arg(long, default_value_t = 16)]
    pub file_mib: u64,
    /// Per-user rate (weir's --default-rate), so downloads span the kills
    #[arg(long, default_value = "4MiB")]
    pub rate: String,
    /// Length of the download phase (the kills fall inside it)
    #[arg(long, default_value = "60", value_parser = crate::util::parse_secs)]
    pub duration: Duration,
    /// Seed of the kill moments [default: from the clock; printed]
    #[arg(long)]
    pub seed: Option<u64>,
    /// A purchase still in the cart this long after its client finished is replaced (and
    /// counts as lost unless its completion shows up anyway)
    #[arg(long, default_value = "10", value_parser = crate::util::parse_secs)]
    pub completion_timeout: Duration,
    /// The weir binary [default: target/release/weir, built first unless --no-build]
    #[arg(long, value_name = "PATH")]
    pub weir_bin: Option<PathBuf>,
    /// The weir-load binary [default: target/release/weir-load next to weir]
    #[arg(long, value_name = "PATH")]
    pub weir_load: Option<PathBuf>,
    /// Do not run `cargo build --release -p weir` first
    #[arg(long)]
    pub no_build: bool,
    /// Result directory [default: results/DATE-chaos]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// What the results README says about this run (e.g. which fix it includes)
    #[arg(long, default_value = "")]
    pub note: String,
}

/// Everything a run needs, resolved (what tests build directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub weir: PathBuf,
    pub weir_load: PathBuf,
    pub cycles: usize,
    pub users: usize,
    pub connections: usize,
    pub file_bytes: u64,
    pub rate: String,
    pub duration: Duration,
    pub seed: u64,
    pub completion_timeout: Duration,
    /// Scratch (data dir, fixture, gate) and raw output (`OUT/raw`).
    pub work: PathBuf,
    pub raw: PathBuf,
    /// More `weir serve` flags (e.g. `--driver epoll`).
    pub extra_args: Vec<String>,
}

/// The counts the issue asks for.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub purchases: u64,
    /// Purchases whose client held every byte with the right hash.
    pub client_completed: u64,
    /// Finished client downloads whose bytes did not match.
    pub client_hash_mismatch: u64,
    /// History rows of the run's users.
    pub completions_recorded: u64,
    pub lost: u64,
    pub duplicated: u64,
    #[serde(rename = "false")]
    pub false_: u64,
    /// Of `false_`: purchases whose download was still in flight when weir-load's run ended (its
    /// last bytes may have been acknowledged by the client's kernel and not yet read).
    pub false_in_flight_at_end: u64,
    /// POSTs received (redeliveries of a key included).
    pub webhook_posts: u64,
    pub webhook_distinct_keys: u64,
    /// Completions with no delivered key.
    pub webhook_missing: u64,
    /// Purchases with more than one distinct key.
    pub webhook_duplicate_keys: u64,
    /// Keys whose event matches no history row.
    pub webhook_orphans: u64,
    /// Purchases replaced after --completion-timeout.
    pub replaced_after_timeout: u64,
}

/// One purchase and what happened to it.
#[derive(Debug, Clone, Serialize)]
pub struct Purchase {
    pub user: String,
    pub n: u64,
    pub added_at_ms: i64,
    pub client_verified: Option<bool>,
    pub completions: Vec<i64>,
    pub webhook_keys: Vec<String>,
    pub replaced_after_timeout: bool,
    /// The user's last purchase, its download unfinished when the run ended.
    pub in_flight_at_end: bool,
}

/// One kill and restart.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub at_ms: u64,
    pub pid: u32,
    /// SIGKILL to `listening on` of the next process.
    pub restart_ms: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub seed: u64,
    pub kills: Vec<Kill>,
    pub counts: Counts,
    pub purchases: Vec<Purchase>,
    pub ledger_idle: bool,
    pub forty_exit: String,
    pub forty_command: String,
    pub weir_command: String,
    /// The first server's `listening on` line (it names the driver).
    pub listen_line: String,
}

/// One POST the receiver got.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Delivery {
    key: String,
    body: serde_json::Value,
}

/// splitmix64: the kill moments, reproducible from the seed without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `cycles` kill moments, sorted, uniform in [`from`, `to`).
pub fn kill_moments(seed: u64, cycles: usize, from: Duration, to: Duration) -> Vec<Duration> {
    let mut s = seed;
    let span = to.saturating_sub(from).as_millis().max(1) as u64;
    let mut v: Vec<Duration> = (0..cycles)
        .map(|_| from + Duration::from_millis(next(&mut s) % span))
        .collect();
    v.sort();
    v
}

/// The webhook receiver: answers every POST with 200 and records its key and body.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start(log: PathBuf) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let log = Arc::new(Mutex::new(std::fs::File::create(log)?));
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (g, log) = (g.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = receive(conn, &g, &log);
                });
            }
        });
        Ok(Receiver { port, got })
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves one keep-alive connection of POSTs.
fn receive(
    conn: TcpStream,
    got: &Mutex<Vec<Delivery>>,
    log: &Mutex<std::fs::File>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let (mut len, mut key) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("idempotency-key") {
                    key = v.trim().to_owned();
                }
            }
        }
        let mut body = vec![0u8; len.min(1 << 20)];
        r.read_exact(&mut body)?;
        let d = Delivery {
            key,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        };
        {
            let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{}", serde_json::to_string(&d).unwrap_or_default());
        }
        got.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}

fn user_name(i: usize) -> String {
    format!("chaos{i}")
}

/// JSON lines of a `--json` listing.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The purchase's `added_at` if the item is in the user's cart (None: not in the cart).
fn in_cart(weir: &Path, data: &Path, user: &str) -> Result<Option<i64>> {
    let out = admin(weir, data, &["cart", "list", user, "--json"], None)?;
    Ok(json_lines(&out)
        .iter()
        .find(|v| v["item"] == ITEM)
        .and_then(|v| v["added_at_ms"].as_i64()))
}

/// `cart add`, returning the new purchase's `added_at` (retried: the store may be busy while
/// weir starts).
fn buy(weir: &Path, data: &Path, user: &str) -> Result<i64> {
    let mut last = None;
    for _ in 0..50 {
        match admin(weir, data, &["cart", "add", user, ITEM], None)
            .and_then(|_| in_cart(weir, data, user))
        {
            Ok(Some(at)) => return Ok(at),
            Ok(None) => last = Some(anyhow::anyhow!("cart add left no row")),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("cart add failed")))
}

/// A user between downloads.
enum Wait {
    /// Downloading (or gated on a purchase not yet made).
    Downloading,
    /// The client finished purchase `n` at this time; waiting for weir to complete it.
    Completion(Instant),
}

/// Runs the scenario and returns what it found; raw output goes to `cfg.raw`.
pub fn run_chaos(cfg: &Config) -> Result<Outcome> {
    std::fs::create_dir_all(&cfg.raw)?;
    let data = cfg.work.join("data");
    let gate_dir = cfg.work.join("gate");
    std::fs::create_dir_all(&gate_dir)?;
    let gate = Gate::new(&gate_dir);
    let file = cfg.work.join("chaos.bin");
    crate::fixture::ensure(&file, cfg.file_bytes, 0x5eed_c4a0)?;
    let sha = crate::util::sha256_file(&file)?;
    let (weir, weir_load) = (&cfg.weir, &cfg.weir_load);

    // Users, the item, the first purchases; credentials in forty's order.
    admin(
        weir,
        &data,
        &["item", "add", ITEM, &file.to_string_lossy()],
        None,
    )?;
    let mut creds = String::new();
    let mut purchases: Vec<Vec<(i64, bool)>> = Vec::new();
    for i in 0..cfg.users {
        let (name, pw) = (user_name(i), format!("pw-chaos-{i}"));
        admin(
            weir,
            &data,
            &["user", "add", &name, "--password-stdin"],
            Some(&pw),
        )?;
        creds.push_str(&format!("{name}:{pw}\n"));
        purchases.push(vec![(buy(weir, &data, &name)?, false)]);
        gate.open(i, 0)?;
    }
    let creds_file = cfg.work.join("credentials");
    std::fs::write(&creds_file, creds)?;

    let receiver = Receiver::start(cfg.raw.join("webhook.jsonl"))?;
    let serve_args = |listen: &str| -> Vec<String> {
        [
            "serve",
            "--data-dir",
            &data.to_string_lossy(),
            "--listen",
            listen,
            "--default-rate",
            &cfg.rate,
            "--webhook",
            &format!("http://127.0.0.1:{}/hook", receiver.port),
            "--grace",
            "1h",
            "--drain-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(cfg.extra_args.iter().cloned())
        .collect()
    };
    let mut starts = 0usize;
    let mut start = |listen: &str| -> Result<Running> {
        let label = format!("weir-{starts:02}");
        starts += 1;
        serve(weir, &serve_args(listen), &[], &cfg.raw, &label)
    };
    let mut server = start("127.0.0.1:0")?;
    let listen = server.addr.to_string();
    let weir_command = server
        .command
        .replace(":0 ", &format!(":{} ", server.port()));

    let events = cfg.raw.join("events.jsonl");
    let mut forty = Command::new(weir_load);
    forty
        .arg("forty")
        .arg(format!("http://{listen}/d/{ITEM}"))
        .args(["--users", &cfg.users.to_string()])
        .args(["--connections", &cfg.connections.to_string()])
        .args(["--duration", &format!("{}ms", cfg.duration.as_millis())])
        .arg("--credentials-file")
        .arg(&creds_file)
        .args(["--sha256", &sha])
        .arg("--reference-file")
        .arg(&file)
        .args(["--retry-for", "60s", "--stall-timeout", "5s"])
        .arg("--events")
        .arg(&events)
        .arg("--gate")
        .arg(&gate_dir)
        .arg("--no-progress")
        .arg("--out")
        .arg(cfg.raw.join("forty"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(cfg.raw.join("forty.stdout"))?)
        .stderr(std::fs::File::create(cfg.raw.join("forty.stderr"))?);
    let forty_command = render(&forty);
    let t0 = Instant::now();
    let mut client: Child = forty.spawn().context("starting weir-load forty")?;
    let moments = kill_moments(
        cfg.seed,
        cfg.cycles,
        cfg.duration.mul_f64(0.05),
        cfg.duration.mul_f64(0.9),
    );
    println!(
        "weir-bench chaos: seed {} ({} kills at {:?} ms)",
        cfg.seed,
        moments.len(),
        moments.iter().map(|m| m.as_millis()).collect::<Vec<_>>()
    );

    let mut kills = Vec::new();
    let mut waits: Vec<Wait> = (0..cfg.users).map(|_| Wait::Downloading).collect();
    let mut seen = 0usize;
    let mut verified: BTreeMap<(usize, u64), Option<bool>> = BTreeMap::new();
    let forty_exit = loop {
        if let Some(st) = client.try_wait()? {
            break st.to_string();
        }
        if t0.elapsed() > cfg.duration + Duration::from_secs(120) {
            signal(client.id(), libc::SIGKILL);
            let st = client.wait()?;
            break format!("{st} (killed: ran 120 s past its duration)");
        }
        // A kill due: SIGKILL, reap, start again on the same address.
        if kills.len() < moments.len() && t0.elapsed() >= moments[kills.len()] {
            let at = t0.elapsed();
            let pid = server.child.id();
            signal(pid, libc::SIGKILL);
            server.child.wait()?;
            server = start(&listen)?;
            kills.push(Kill {
                at_ms: at.as_millis() as u64,
                pid,
                restart_ms: (t0.elapsed() - at).as_millis() as u64,
            });
        }
        // Downloads the clients finished.
        let records = DownloadLog::read(&events).unwrap_or_default();
        for r in &records[seen.min(records.len())..] {
            verified.insert((r.user, r.download), r.verified);
            if r.user < cfg.users {
                waits[r.user] = Wait::Completion(Instant::now());
            }
        }
        seen = records.len();
        // Users whose purchase weir completed (or that waited too long) buy again.
        for (u, w) in waits.iter_mut().enumerate() {
            let Wait::Completion(since) = *w else {
                continue;
            };
            let name = user_name(u);
            let timed_out = since.elapsed() > cfg.completion_timeout;
            let Ok(row) = in_cart(weir, &data, &name) else {
                continue;
            };
            if row.is_some() && !timed_out {
                continue;
            }
            if row.is_some() {
                // What weir counted of it (for the raw output), then replace it. Already gone
                // if weir completed it meanwhile: the history tells.
                let listing = admin(weir, &data, &["cart", "list", &name, "--json"], None)
                    .unwrap_or_default();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(cfg.raw.join("replaced.jsonl"))?;
                writeln!(
                    f,
                    "{{\"user\":{name:?},\"n\":{},\"cart\":{}}}",
                    purchases[u].len() - 1,
                    listing.lines().next().unwrap_or("null")
                )?;
                let _ = admin(weir, &data, &["cart", "remove", &name, ITEM], None);
                if let Some(last) = purchases[u].last_mut() {
                    last.1 = true;
                }
            }
            purchases[u].push((buy(weir, &data, &name)?, false));
            gate.open(u, purchases[u].len() as u64 - 1)?;
            *w = Wait::Downloading;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let records = DownloadLog::read(&events).unwrap_or_default();
    for r in &records {
        verified.insert((r.user, r.download), r.verified);
    }

    // A clean stop (SIGTERM: drain and flush), a clean start, and the ledger left to settle.
    server.stop(Duration::from_secs(10))?;
    let server = start(&listen)?;
    let (ledger_idle, history) = settle(weir, &data, cfg.users, &receiver)?;
    server.stop(Duration::from_secs(10))?;

    // Accounting.
    let deliveries = receiver.deliveries();
    let mut carts = String::new();
    for u in 0..cfg.users {
        carts.push_str(&admin(
            weir,
            &data,
            &["cart", "list", &user_name(u), "--json"],
            None,
        )?);
        carts.push('\n');
    }
    std::fs::write(cfg.raw.join("carts-at-end.jsonl"), carts)?;
    let (counts, list) = account(cfg.users, &purchases, &verified, &history, &deliveries);
    std::fs::write(
        cfg.raw.join("history.json"),
        serde_json::to_string_pretty(&history)?,
    )?;
    let listen_line = std::fs::read_to_string(cfg.raw.join("weir-00.stdout"))?
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_default()
        .to_owned();
    Ok(Outcome {
        listen_line,
        seed: cfg.seed,
        kills,
        counts,
        purchases: list,
        ledger_idle,
        forty_exit,
        forty_command,
        weir_command,
    })
}

/// Waits until every history row has a delivered webhook key and the history stopped
/// changing (two looks in a row, 500 ms apart), at most 60 s. Returns whether it got there and
/// each user's completion times.
fn settle(
    weir: &Path,
    data: &Path,
    users: usize,
    receiver: &Receiver,
) -> Result<(bool, Vec<Vec<i64>>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<Vec<Vec<i64>>> = None;
    loop {
        let mut h = Vec::new();
        for u in 0..users {
            let out = admin(weir, data, &["history", &user_name(u), "--json"], None)?;
            h.push(
                json_lines(&out)
                    .iter()
                    .filter(|v| v["item"] == ITEM)
                    .filter_map(|v| v["completed_at_ms"].as_i64())
                    .collect::<Vec<i64>>(),
            );
        }
        let rows: usize = h.iter().map(Vec::len).sum();
        let keys: BTreeSet<String> = receiver.deliveries().into_iter().map(|d| d.key).collect();
        let idle = keys.len() >= rows && last.as_ref() == Some(&h);
        if idle || Instant::now() >= deadline {
            return Ok((idle, h));
        }
        last = Some(h);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Per purchase: client result, history rows and webhook keys; and the counts.
fn account(
    users: usize,
    purchases: &[Vec<(i64, bool)>],
    verified: &BTreeMap<(usize, u64), Option<bool>>,
    history: &[Vec<i64>],
    deliveries: &[Delivery],
) -> (Counts, Vec<Purchase>) {
    let mut c = Counts::default();
    let mut list = Vec::new();
    // Key -> (user, completed_at) from the event bodies.
    let mut keys: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for d in deliveries {
        c.webhook_posts += 1;
        let user = d.body["user"].as_str().unwrap_or("").to_owned();
        let at = d.body["completed_at_ms"].as_i64().unwrap_or(i64::MIN);
        keys.insert(d.key.clone(), (user, at));
    }
    c.webhook_distinct_keys = keys.len() as u64;
    let mut matched_keys = BTreeSet::new();
    for (u, ps) in purchases.iter().enumerate().take(users) {
        let name = user_name(u);
        // The purchase a completion at `at` belongs to: the last one added before it.
        let owner = |at: i64| ps.iter().rposition(|(added, _)| *added <= at);
        for (n, (added, replaced)) in ps.iter().enumerate() {
            let client = verified.get(&(u, n as u64)).copied().flatten();
            let completions: Vec<i64> = history
                .get(u)
                .map(|h| {
                    h.iter()
                        .copied()
                        .filter(|at| owner(*at) == Some(n))
                        .collect()
                })
                .unwrap_or_default();
            let wkeys: Vec<String> = keys
                .iter()
                .filter(|(_, (user, at))| *user == name && owner(*at) == Some(n))
                .map(|(k, _)| k.clone())
                .collect();
            matched_keys.extend(wkeys.iter().cloned());
            c.purchases += 1;
            let held = client == Some(true);
            c.client_completed += u64::from(held);
            c.client_hash_mismatch += u64::from(client == Some(false));
            c.completions_recorded += completions.len() as u64;
            c.lost += u64::from(held && completions.is_empty());
            let is_false = !held && !completions.is_empty();
            let in_flight_at_end = client.is_none() && n + 1 == ps.len() && !*replaced;
            c.false_ += u64::from(is_false);
            c.false_in_flight_at_end += u64::from(is_false && in_flight_at_end);
            c.duplicated += u64::from(completions.len() > 1 || wkeys.len() > 1);
            c.webhook_missing += u64::from(!completions.is_empty() && wkeys.is_empty());
            c.webhook_duplicate_keys += u64::from(wkeys.len() > 1);
            c.replaced_after_timeout += u64::from(*replaced);
            list.push(Purchase {
                user: name.clone(),
                n: n as u64,
                added_at_ms: *added,
                client_verified: client,
                completions,
                webhook_keys: wkeys,
                replaced_after_timeout: *replaced,
                in_flight_at_end,
            });
        }
    }
    c.webhook_orphans = keys.len() as u64 - matched_keys.len() as u64;
    (c, list)
}

/// `weir-bench chaos`: resolve the binaries, run, print and write the report.
pub fn run(a: Args) -> Result<()> {
    let weir = crate::weir_binary(&a.weir_bin, a.no_build)?;
    let weir_load = match &a.weir_load {
        Some(p) => p.clone(),
        None => weir.with_file_name("weir-load"),
    };
    if !weir_load.exists() {
        bail!(
            "{} missing (cargo build --release -p weir-load)",
            weir_load.display()
        );
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let out = crate::out_dir(&a.out, "chaos", false)?;
    let header = crate::report::Header::start("chaos", &weir);
    let work = tempfile::tempdir()?;
    let cfg = Config {
        weir,
        weir_load,
        cycles: a.cycles,
        users: a.users,
        connections: a.connections,
        file_bytes: a.file_mib << 20,
        rate: a.rate.clone(),
        duration: a.duration,
        seed,
        completion_timeout: a.completion_timeout,
        work: work.path().to_owned(),
        raw: out.join("raw"),
        extra_args: Vec::new(),
    };
    let o = run_chaos(&cfg)?;
    let c = &o.counts;
    let table = format!(
        "| seed | kills | users x conns | purchases | client completed | completions recorded | LOST | DUPLICATED | FALSE | webhook keys | webhook missing | webhook posts |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} x {} | {} | {} | {} | **{}** | **{}** | **{}** | {} | {} | {} |\n",
        o.seed,
        o.kills.len(),
        cfg.users,
        cfg.connections,
        c.purchases,
        c.client_completed,
        c.completions_recorded,
        c.lost,
        c.duplicated,
        c.false_,
        c.webhook_distinct_keys,
        c.webhook_missing,
        c.webhook_posts,
    );
    let notes = format!(
        "{}\n\nItem {} MiB, per-user rate {}, download phase {:?}, completion timeout {:?}; \
         FALSE for a download in flight when weir-load's run ended {}; \
         client hash mismatches {}, purchases replaced after the timeout {}, webhook keys with \
         no history row {}, ledger idle at the end: {}; weir-load exit: {}.\n\n\
         Kills (ms after the start, restart = SIGKILL to the next `listening on`): {}\n\n\
         weir: `{}`\n\nweir-load: `{}`\n\n\
         Raw output in `raw/`: `events.jsonl` (weir-load --events), `webhook.jsonl` (every POST), \
         `history.json`, `carts-at-end.jsonl`, `replaced.jsonl` (the cart row of each purchase replaced \
         after the timeout: what weir had counted of it), `weir-NN.stdout/stderr` (one per start), \
         `forty.*` and `forty/` (weir-load's results); per-purchase detail in `summary.json`.\n",
        a.note,
        a.file_mib,
        cfg.rate,
        cfg.duration,
        cfg.completion_timeout,
        c.false_in_flight_at_end,
        c.client_hash_mismatch,
        c.replaced_after_timeout,
        c.webhook_orphans,
        o.ledger_idle,
        o.forty_exit,
        o.kills
            .iter()
            .map(|k| format!("{} (restart {} ms)", k.at_ms, k.restart_ms))
            .collect::<Vec<_>>()
            .join(", "),
        o.weir_command,
        o.forty_command,
    );
    crate::report::write_simple(
        &out,
        header,
        "Chaos: SIGKILL during resumed downloads (issue 14)",
        &table,
        &notes,
        &o,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_moments_are_reproducible_sorted_and_in_range() {
        let (a, b) = (Duration::from_secs(3), Duration::from_secs(54));
        let k = kill_moments(42, 20, a, b);
        assert_eq!(k, kill_moments(42, 20, a, b));
        assert_ne!(k, kill_moments(43, 20, a, b));
        assert_eq!(k.len(), 20);
        assert!(k.windows(2).all(|w| w[0] <= w[1]));
        assert!(k.iter().all(|m| *m >= a && *m < b));
    }

    fn delivery(key: &str, user: &str, at: i64) -> Delivery {
        Delivery {
            key: key.into(),
            body: serde_json::json!({"user": user, "completed_at_ms": at}),
        }
    }

    #[test]
    fn accounting_tells_lost_duplicated_false_and_missing_apart() {
        // chaos0: purchases at 100 (client ok, completed once, key once, redelivered),
        // 200 (client ok, no completion: lost), 300 (client never finished, completed: false).
        // chaos1: purchase at 100 (client ok, two completions: duplicated, one key: missing
        // none, duplicate keys none), 500 (client hash mismatch, nothing).
        let purchases = vec![
            vec![(100, false), (200, true), (300, false)],
            vec![(100, false), (500, false)],
        ];
        let mut verified = BTreeMap::new();
        verified.insert((0, 0), Some(true));
        verified.insert((0, 1), Some(true));
        verified.insert((1, 0), Some(true));
        verified.insert((1, 1), Some(false));
        let history = vec![vec![150, 350], vec![110, 120]];
        let deliveries = vec![
            delivery("k1", "chaos0", 150),
            delivery("k1", "chaos0", 150),
            delivery("k2", "chaos0", 350),
            delivery("k3", "chaos1", 110),
            delivery("k9", "chaos1", 50),
        ];
        let (c, list) = account(2, &purchases, &verified, &history, &deliveries);
        assert_eq!(c.purchases, 5);
        assert_eq!(c.client_completed, 3);
        assert_eq!(c.client_hash_mismatch, 1);
        assert_eq!(c.completions_recorded, 4);
        assert_eq!(c.lost, 1);
        assert_eq!(c.false_, 1);
        assert_eq!(c.false_in_flight_at_end, 1, "chaos0's last purchase");
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.webhook_posts, 5);
        assert_eq!(c.webhook_distinct_keys, 4);
        assert_eq!(c.webhook_missing, 0);
        assert_eq!(c.webhook_orphans, 1, "k9 precedes every purchase of chaos1");
        assert_eq!(c.replaced_after_timeout, 1);
        assert_eq!(list[0].webhook_keys, vec!["k1".to_string()]);
        assert_eq!(list[3].completions, vec![110, 120]);
    }
}
