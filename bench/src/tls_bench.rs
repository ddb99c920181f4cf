//! `weir-bench tls` (issue 15): weir terminating TLS itself (`weir serve --tls-listen`) against
//! nginx with `ssl`, in one run: the same certificate (ECDSA P-256, made here with the openssl
//! CLI), the same cipher suite (weir-load offers only `--cipher`; nginx is pinned to it as well),
//! the same files, each server in a session of its own ([`crate::servers::spawn`]) and started
//! fresh for every measurement, the servers alternating round by round; medians over rounds.
//!
//! Measurements (the five):
//! - `big-40`: `weir-load forty --users 1 --connections 40` on the big file: throughput
//!   (goodput) and the server's CPU (utime+stime of its processes) per GiB.
//! - `4k-keepalive`: `weir-load urlopen --threads 100 --workers 1` on the 4 KiB file (`/d/ID`
//!   with an `Authorization: Basic` header, as wrk-4k in the first benchmark): requests/s.
//! - `handshakes`: `weir-load urlopen --threads 40 --no-keepalive` on the 4 KiB file: a full TLS
//!   handshake per request (weir-load never resumes sessions; nginx has tickets and its session
//!   cache off), new connections/s and server CPU per connection.
//! - `idle`: N TLS keep-alive connections held by this process after one 4 KiB GET each: the
//!   server's RssAnon per connection.
//! - `stalled`: N TLS downloads of the big file that read 16 KiB and stop: RssAnon per
//!   connection (the bound is 8 KiB; nginx keeps a 16 KiB `ssl_buffer_size` buffer).
//!
//! `--servers nginx` measures nginx alone (a smoke test, or before weir has TLS). A weir without
//! `--tls-listen` fails its runs with weir's own error, recorded in the run and the table.
//! Results: `runs.json`-like records in `summary.json` through [`crate::report::write_simple`],
//! so `weir-bench report` renders the table again ([`table`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fixture::Fixture;
use crate::procfs::{self, Memory, SockStat};
use crate::report::{write_simple, Header};
use crate::scenarios::held::{settle, STALL_AFTER_BYTES};
use crate::servers::nginx::{NginxSetup, Options as NginxOptions, Tls as NginxTls};
use crate::servers::{weir, Running};
use crate::util::{median, parse_secs};

/// The servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    Weir,
    Nginx,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Weir => "weir",
            Server::Nginx => "nginx",
        }
    }
}

/// `weir-bench tls` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Results directory [default: results/DATE-tls]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Servers to measure, comma separated (`nginx` alone is a smoke test)
    #[arg(long, value_delimiter = ',', value_enum, default_value = "weir,nginx")]
    pub servers: Vec<Server>,
    /// Rounds: each measurement once per server per round (the order alternates)
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Size of the big file in MiB [default: 1024, 256 with --quick]
    #[arg(long, value_name = "MiB")]
    pub big_mib: Option<u64>,
    /// Length of each weir-load run [default: 10s, 3s with --quick]
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Connections held in the idle and stalled measurements [default: 1000, 200 with --quick]
    #[arg(long, value_name = "N")]
    pub conns: Option<usize>,
    /// The TLS 1.3 cipher suite both servers negotiate (rustls name; nginx gets OpenSSL's)
    #[arg(long, default_value = "TLS13_AES_128_GCM_SHA256")]
    pub cipher: String,
    /// A short smoke run: 1 round, 256 MiB, 3 s runs, 200 held connections
    #[arg(long)]
    pub quick: bool,
    /// weir's I/O driver
    #[arg(long, default_value = "uring")]
    pub weir_driver: String,
    /// Use this weir binary instead of building target/release/weir
    #[arg(long, value_name = "PATH")]
    pub weir_bin: Option<PathBuf>,
    /// The weir-load binary [default: weir-load beside the weir binary]
    #[arg(long, value_name = "PATH")]
    pub weir_load: Option<PathBuf>,
    /// Do not run `cargo build --release -p weir -p weir-load` first
    #[arg(long)]
    pub no_build: bool,
    /// Scratch directory for fixtures, certificates and server state [default: a new temp dir]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// The measurements, in the order they run.
pub const MEASURES: [&str; 5] = ["big-40", "4k-keepalive", "handshakes", "idle", "stalled"];

/// One measurement of one server in one round (the raw data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub measure: String,
    pub server: String,
    pub round: usize,
    /// Set when the run failed (no metrics).
    pub error: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    /// Client and server command lines.
    pub commands: Vec<String>,
}

/// The metric each table row shows: (measure, key, label, unit, goal).
const ROWS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "big-40",
        "gb_per_s",
        "1 GiB over 40 conns: throughput",
        "GB/s",
        "≥ 1.0×",
    ),
    (
        "big-40",
        "cpu_s_per_gib",
        "1 GiB over 40 conns: server CPU",
        "s/GiB",
        "≤ 1.0×",
    ),
    (
        "4k-keepalive",
        "requests_per_s",
        "4 KiB keep-alive",
        "req/s",
        "≥ 1.0×",
    ),
    (
        "4k-keepalive",
        "latency_p99_ms",
        "4 KiB keep-alive: latency p99",
        "ms",
        "",
    ),
    (
        "handshakes",
        "conns_per_s",
        "new TLS connections",
        "conn/s",
        "≥ 1.0×",
    ),
    (
        "handshakes",
        "cpu_ms_per_conn",
        "new TLS connection: server CPU",
        "ms",
        "",
    ),
    (
        "handshakes",
        "handshake_ms",
        "handshake time (client view)",
        "ms",
        "",
    ),
    (
        "idle",
        "rss_anon_kib_per_conn",
        "idle TLS keep-alive: RssAnon",
        "KiB/conn",
        "≤ 1.0×",
    ),
    (
        "stalled",
        "rss_anon_kib_per_conn",
        "stalled TLS download: RssAnon",
        "KiB/conn",
        "weir ≤ 8",
    ),
];

/// The markdown table of medians from the raw runs.
pub fn table(runs: &[Run]) -> String {
    let servers: Vec<&str> = ["weir", "nginx"]
        .into_iter()
        .filter(|s| runs.iter().any(|r| r.server == *s))
        .collect();
    let mut s = String::from("| measurement | unit |");
    for sv in &servers {
        s.push_str(&format!(" {sv} (median) |"));
    }
    s.push_str(" weir / nginx | goal | runs ok |\n|---|---|");
    for _ in &servers {
        s.push_str("---|");
    }
    s.push_str("---|---|---|\n");
    for &(measure, key, label, unit, goal) in ROWS {
        let mut med = BTreeMap::new();
        let mut oks = Vec::new();
        for sv in &servers {
            let vals: Vec<f64> = runs
                .iter()
                .filter(|r| r.measure == measure && r.server == *sv && r.error.is_none())
                .filter_map(|r| r.metrics.get(key).copied())
                .collect();
            let (ok, all) = runs
                .iter()
                .filter(|r| r.measure == measure && r.server == *sv)
                .fold((0, 0), |(ok, all), r| {
                    (ok + usize::from(r.error.is_none()), all + 1)
                });
            oks.push(format!("{sv} {ok}/{all}"));
            if let Some(m) = median(&vals) {
                med.insert(*sv, m);
            }
        }
        s.push_str(&format!("| {label} | {unit} |"));
        for sv in &servers {
            match med.get(sv) {
                Some(v) => s.push_str(&format!(" {} |", crate::report::fmt_num(*v))),
                None => s.push_str(" – |"),
            }
        }
        let ratio = match (med.get("weir"), med.get("nginx")) {
            (Some(w), Some(n)) if *n != 0.0 => format!("{:.2}×", w / n),
            _ => "–".to_owned(),
        };
        s.push_str(&format!(" {ratio} | {goal} | {} |\n", oks.join(", ")));
    }
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.error.as_ref().map(|e| {
                format!(
                    "- {} {} round {}: {}",
                    r.measure,
                    r.server,
                    r.round,
                    e.lines().next().unwrap_or("")
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("\nFailed runs:\n\n");
        s.push_str(&failed.join("\n"));
        s.push('\n');
    }
    s
}

/// The test CA and the server certificate both servers present (ECDSA P-256, for 127.0.0.1).
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 30 -subj /CN=weir-bench-tls-ca"),
        format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 30 -extfile ext.cnf"
            .to_owned(),
    ];
    for step in steps {
        let out = Command::new("openssl")
            .args(step.split_whitespace())
            .current_dir(dir)
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl {step}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    // nginx's workers may run as another user: the key must be readable by them.
    for f in ["ca.pem", "server.pem", "server.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

/// OpenSSL's name of a rustls TLS 1.3 suite name (`TLS13_AES_128_GCM_SHA256` →
/// `TLS_AES_128_GCM_SHA256`).
pub fn openssl_suite(rustls: &str) -> String {
    rustls.replacen("TLS13_", "TLS_", 1)
}

/// Everything a measurement needs.
struct Bench {
    fx: Fixture,
    certs: Certs,
    cipher: String,
    duration: Duration,
    conns: usize,
    weir_load: PathBuf,
    nginx: NginxSetup,
    weir: Option<weir::WeirSetup>,
    driver: String,
    logs: PathBuf,
    tls: Arc<weir_load::tls::Tls>,
}

impl Bench {
    fn start(&self, server: Server, label: &str) -> Result<Running> {
        match server {
            Server::Nginx => {
                let opts = NginxOptions {
                    tls: Some(NginxTls {
                        cert: self.certs.cert.clone(),
                        key: self.certs.key.clone(),
                        ciphersuites: openssl_suite(&self.cipher),
                    }),
                    ..NginxOptions::default()
                };
                self.nginx.start(&opts, &self.logs, label)
            }
            Server::Weir => {
                let w = self
                    .weir
                    .as_ref()
                    .context("no weir setup (--servers without weir)")?;
                for id in &w.items {
                    weir::admin(&w.bin, &w.data_dir, &["cart", "add", weir::USER, id], None)?;
                }
                let mut args = w.serve_args(&self.driver);
                for a in [
                    "--tls-listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                    "--tls-cert".to_owned(),
                    self.certs.cert.display().to_string(),
                    "--tls-key".to_owned(),
                    self.certs.key.display().to_string(),
                ] {
                    args.push(a);
                }
                let mut r = weir::serve_until(&w.bin, &args, &[], &self.logs, label, "https")
                    .context("starting weir with --tls-listen (a weir without TLS fails here)")?;
                r.name = "weir".to_owned();
                r.authorization = Some(w.authorization());
                r.links = w.links.clone();
                Ok(r)
            }
        }
    }

    /// `https://ADDR/d/ID`: the path clients with the `Authorization` header use (the 4 KiB
    /// runs, as wrk-4k in the first benchmark; nginx ignores the header).
    fn path_url(&self, srv: &Running, id: &str) -> String {
        format!("https://{}{}", srv.addr, srv.path(id))
    }

    /// `https://ADDR/PATH` of an item for a download manager: weir's signed link (what a shop
    /// hands out), nginx's path.
    fn url(&self, srv: &Running, id: &str) -> String {
        let path = srv
            .links
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| srv.path(id));
        format!("https://{}{}", srv.addr, path)
    }

    /// Run weir-load with `args` against `srv`; returns its summary and the server CPU seconds
    /// it cost.
    fn weir_load(
        &self,
        srv: &Running,
        args: &[String],
        out: &Path,
        commands: &mut Vec<String>,
    ) -> Result<(weir_load::summary::Summary, f64)> {
        let mut cmd = Command::new(&self.weir_load);
        cmd.args(args)
            .arg("--cacert")
            .arg(&self.certs.ca)
            .args(["--tls-ciphers", &self.cipher, "--no-progress", "--out"])
            .arg(out)
            .stdin(std::process::Stdio::null());
        commands.push(crate::child::render(&cmd));
        let pids = srv.pids();
        let cpu0 = procfs::cpu_seconds(&pids)?;
        let o = cmd
            .output()
            .with_context(|| format!("running {}", self.weir_load.display()))?;
        let cpu = procfs::cpu_seconds(&pids)? - cpu0;
        if !o.status.success() {
            bail!(
                "weir-load failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let s = weir_load::summary::Summary::read(out)?;
        if s.errors_total > 0 {
            bail!("weir-load counted errors: {}", s.errors.short());
        }
        Ok((s, cpu))
    }

    fn measure(&self, m: &str, srv: &Running, out: &Path, r: &mut Run) -> Result<()> {
        let secs = format!("{}s", self.duration.as_secs().max(1));
        let auth = srv.authorization.is_some().then(|| {
            let w = self.weir.as_ref().expect("weir setup");
            format!("{}:{}", weir::USER, w.password)
        });
        let cred = |mut v: Vec<String>| {
            if let Some(a) = &auth {
                v.push("--credentials".into());
                v.push(a.clone());
            }
            v
        };
        let s = |x: &str| x.to_owned();
        match m {
            "big-40" => {
                let args = vec![
                    s("forty"),
                    self.url(srv, &self.fx.big.id),
                    s("--users"),
                    s("1"),
                    s("--connections"),
                    s("40"),
                    s("--duration"),
                    secs,
                ];
                let (sum, cpu) = self.weir_load(srv, &args, out, &mut r.commands)?;
                let gib = sum.useful_bytes as f64 / crate::scenarios::GIB;
                r.metrics
                    .insert("gb_per_s".into(), sum.goodput_bytes_per_sec / 1e9);
                r.metrics
                    .insert("cpu_s_per_gib".into(), cpu / gib.max(1e-9));
                r.metrics.insert("gib".into(), gib);
                r.metrics
                    .insert("downloads".into(), sum.downloads_completed as f64);
            }
            "4k-keepalive" | "handshakes" => {
                let fresh = m == "handshakes";
                let mut args = vec![
                    s("urlopen"),
                    self.path_url(srv, &self.fx.small.id),
                    s("--threads"),
                    s(if fresh { "40" } else { "100" }),
                    s("--workers"),
                    s("1"),
                    s("--duration"),
                    secs,
                    s("--sha256"),
                    self.fx.small.sha256.clone(),
                ];
                if fresh {
                    args.push(s("--no-keepalive"));
                }
                let (sum, cpu) = self.weir_load(srv, &cred(args), out, &mut r.commands)?;
                let reqs = sum.requests_per_sec;
                let lat = sum.histograms.get("download");
                if fresh {
                    r.metrics.insert("conns_per_s".into(), reqs);
                    r.metrics.insert(
                        "cpu_ms_per_conn".into(),
                        cpu * 1e3 / (sum.tls_handshakes.max(1) as f64),
                    );
                    r.metrics
                        .insert("handshake_ms".into(), sum.tls_handshake_mean_us / 1e3);
                } else {
                    r.metrics.insert("requests_per_s".into(), reqs);
                    r.metrics.insert(
                        "cpu_s_per_mreq".into(),
                        cpu * 1e6 / (sum.responses.max(1) as f64),
                    );
                }
                if let Some(h) = lat {
                    r.metrics
                        .insert("latency_p50_ms".into(), h.p50 as f64 / 1e3);
                    r.metrics
                        .insert("latency_p99_ms".into(), h.p99 as f64 / 1e3);
                }
                if sum.downloads_verified != sum.downloads_completed {
                    bail!("responses with other bytes than the file's");
                }
            }
            "idle" | "stalled" => self.held(m == "stalled", srv, r)?,
            other => bail!("unknown measurement {other}"),
        }
        Ok(())
    }

    /// N TLS connections from this process: idle after one 4 KiB GET, or stalled 16 KiB into
    /// the big file. The server's RssAnon per connection once it settled.
    fn held(&self, stalled: bool, srv: &Running, r: &mut Run) -> Result<()> {
        let id = if stalled {
            &self.fx.big.id
        } else {
            &self.fx.small.id
        };
        let request = crate::client::request(&srv.path(id), srv.authorization.as_deref(), None);
        r.commands.push(format!(
            "(in-process, rustls, {}) {} × TLS connect {}; send {request:?}; {}",
            self.cipher,
            self.conns,
            srv.addr,
            if stalled {
                format!("read {STALL_AFTER_BYTES} body bytes; never read again")
            } else {
                "read the response fully; hold the connection idle".to_owned()
            }
        ));
        let pids = srv.memory_pids();
        let before = Memory::of(&pids)?;
        let tcp_before = SockStat::read()?.tcp_mem_pages;
        let mut held = Vec::with_capacity(self.conns);
        let mut first_error = None;
        let mut errors = 0usize;
        for _ in 0..self.conns {
            match self.open_held(srv, request.as_bytes(), stalled) {
                Ok(c) => held.push(c),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    if errors > self.conns / 100 + 10 {
                        break;
                    }
                }
            }
        }
        if errors > 0 {
            bail!(
                "{errors} TLS connections failed to open; first: {}",
                first_error.unwrap_or_default()
            );
        }
        let limit = Duration::from_secs(120);
        let (samples, settled) = if stalled {
            settle(limit, || Ok(SockStat::read()?.tcp_mem_pages as f64))?
        } else {
            settle(limit, || Ok(Memory::of(&pids)?.rss_anon_kib as f64))?
        };
        if !settled {
            bail!("memory did not settle within {limit:?}: {samples:?}");
        }
        let after = Memory::of(&pids)?;
        let tcp_after = SockStat::read()?.tcp_mem_pages;
        let n = held.len().max(1) as f64;
        r.metrics.insert(
            "rss_anon_kib_per_conn".into(),
            (after.rss_anon_kib as f64 - before.rss_anon_kib as f64) / n,
        );
        r.metrics.insert(
            "rss_file_kib_per_conn".into(),
            (after.rss_file_kib as f64 - before.rss_file_kib as f64) / n,
        );
        r.metrics.insert(
            "tcp_mem_kib_per_conn".into(),
            (tcp_after as f64 - tcp_before as f64) * procfs::page_size() as f64 / 1024.0 / n,
        );
        r.metrics.insert("connections".into(), held.len() as f64);
        drop(held);
        Ok(())
    }

    fn open_held(
        &self,
        srv: &Running,
        request: &[u8],
        stalled: bool,
    ) -> Result<weir_load::tls::BlockingTls> {
        let sock = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(30))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        sock.set_nodelay(true)?;
        let mut s = weir_load::tls::blocking(&self.tls, sock)?;
        s.write_all(request)?;
        s.flush()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let (status, len, head_end) = loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("closed before a response head");
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(h) = crate::client::parse_head(&got) {
                break h?;
            }
        };
        anyhow::ensure!(status == 200, "status {status}, expected 200");
        let want = if stalled {
            STALL_AFTER_BYTES.min(len)
        } else {
            len
        };
        let mut have = (got.len() - head_end) as u64;
        while have < want {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("closed after {have} of {want} body bytes");
            }
            have += n as u64;
        }
        s.sock.set_nonblocking(true)?;
        Ok(s)
    }
}

pub fn run(a: Args) -> Result<()> {
    let servers: Vec<Server> = {
        let mut v = a.servers.clone();
        v.dedup();
        v
    };
    anyhow::ensure!(!servers.is_empty(), "--servers: none given");
    let rounds = if a.quick && a.rounds == 3 {
        1
    } else {
        a.rounds.max(1)
    };
    let big_bytes = a.big_mib.unwrap_or(if a.quick { 256 } else { 1024 }) << 20;
    let duration = a
        .duration
        .unwrap_or(Duration::from_secs(if a.quick { 3 } else { 10 }));
    let conns = a.conns.unwrap_or(if a.quick { 200 } else { 1000 });
    crate::need("nginx")?;
    crate::need("openssl")?;
    let with_weir = servers.contains(&Server::Weir);
    let ws = crate::workspace_root();
    if !a.no_build {
        let mut cmd = Command::new("cargo");
        cmd.args(["build", "--release", "-p", "weir-load"]);
        if with_weir && a.weir_bin.is_none() {
            cmd.args(["-p", "weir"]);
        }
        eprintln!("weir-bench: {}", crate::child::render(&cmd));
        let st = cmd.current_dir(&ws).status().context("running cargo")?;
        anyhow::ensure!(st.success(), "cargo build failed ({st})");
    }
    let weir_bin = a
        .weir_bin
        .clone()
        .unwrap_or_else(|| ws.join("target/release/weir"));
    let weir_load = a
        .weir_load
        .clone()
        .unwrap_or_else(|| weir_bin.with_file_name("weir-load"));
    anyhow::ensure!(
        weir_load.is_file(),
        "{} missing (cargo build --release -p weir-load, or --weir-load PATH)",
        weir_load.display()
    );
    if with_weir {
        anyhow::ensure!(
            weir_bin.is_file(),
            "{} missing (build it or pass --weir-bin)",
            weir_bin.display()
        );
    }
    if with_weir {
        let help = Command::new(&weir_bin).args(["serve", "--help"]).output();
        let has_tls =
            help.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--tls-listen"));
        anyhow::ensure!(
            has_tls,
            "{} has no `serve --tls-listen` (a weir without TLS): build one that has, or measure \
             nginx alone with --servers nginx",
            weir_bin.display()
        );
    }
    let out = crate::out_dir(&a.out, "tls", a.quick)?;
    let header = Header::start("tls", &weir_bin);
    let (work, _tmp) = crate::runner::scratch(&a.work_dir)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "weir-bench tls: results in {}, scratch in {}",
        out.display(),
        work.display()
    );
    let fx = Fixture::create(&work, big_bytes)?;
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&work, &fx.root, &fx.root.join("d")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        for p in [&fx.big.path, &fx.small.path] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    let certs = make_certs(&work.join("tls"))?;
    let url = weir_load::target::Url::parse("https://127.0.0.1/")?;
    let tls = weir_load::tls::Tls::for_url(
        &url,
        &weir_load::tls::TlsOptions {
            cacert: Some(&certs.ca),
            insecure: false,
            ciphers: Some(&a.cipher),
        },
    )?
    .context("https URL without TLS")?;
    let weir = if with_weir {
        Some(weir::WeirSetup::create(
            &weir_bin,
            &work.join("weir-data"),
            &fx,
            Vec::new(),
        )?)
    } else {
        None
    };
    let bench = Bench {
        nginx: NginxSetup::create(&work, &fx.root)?,
        fx,
        certs,
        cipher: a.cipher.clone(),
        duration,
        conns,
        weir_load,
        weir,
        driver: a.weir_driver.clone(),
        logs: logs.clone(),
        tls,
    };

    let raw = out.join("raw");
    std::fs::create_dir_all(&raw)?;
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for m in MEASURES {
            for &server in crate::runner::alternate(&servers, round) {
                let label = format!("{m}-{}-round{round}", server.name());
                let mut r = Run {
                    measure: m.to_owned(),
                    server: server.name().to_owned(),
                    round,
                    error: None,
                    metrics: BTreeMap::new(),
                    commands: Vec::new(),
                };
                let t0 = Instant::now();
                let res = (|| -> Result<()> {
                    let srv = bench.start(server, &label)?;
                    r.commands.push(srv.command.clone());
                    // Warm what a steady-state server has warm (TLS context, credential cache,
                    // the file's mapping) before anything is measured.
                    let small = crate::client::request(
                        &srv.path(&bench.fx.small.id),
                        srv.authorization.as_deref(),
                        None,
                    );
                    drop(
                        bench
                            .open_held(&srv, small.as_bytes(), false)
                            .context("warm-up GET")?,
                    );
                    let measured = bench.measure(m, &srv, &raw.join(&label), &mut r);
                    srv.stop(Duration::from_secs(15))?;
                    measured
                })();
                if let Err(e) = res {
                    r.error = Some(format!("{e:#}"));
                    r.metrics.clear();
                }
                eprintln!(
                    "[round {round}] {m} {}: {} ({:.1} s)",
                    server.name(),
                    match &r.error {
                        Some(e) => format!("FAILED: {e}"),
                        None => format!("{:?}", r.metrics),
                    },
                    t0.elapsed().as_secs_f64()
                );
                runs.push(r);
            }
        }
    }
    let nginx_conf = std::fs::read_to_string(bench.nginx.prefix.join("nginx.conf"))?;
    std::fs::write(out.join("nginx.conf"), &nginx_conf)?;
    let notes = format!(
        "Each server in its own session, started fresh for every measurement; medians over \
         {rounds} round(s), the servers alternating. Same certificate (ECDSA P-256 from a test \
         CA, `tls/` in the scratch directory), same suite `{}` (weir-load offers only that one; \
         nginx: `ssl_conf_command Ciphersuites {}`), no session resumption, same files (big: \
         {} bytes sha256 `{}`; 4 KiB sha256 `{}`). weir-load runs {} s each; {} held \
         connections. Raw weir-load results per run in `raw/`, every run's metrics and exact \
         commands in `summary.json`.\n",
        bench.cipher,
        openssl_suite(&bench.cipher),
        bench.fx.big.len,
        bench.fx.big.sha256,
        bench.fx.small.sha256,
        duration.as_secs(),
        conns
    );
    let md = table(&runs);
    write_simple(
        &out,
        header,
        "TLS: weir --tls-listen vs nginx ssl (issue 15)",
        &md,
        &notes,
        &runs,
    )
}

/// Render stored runs (for `weir-bench report`).
pub fn table_from(data: &Value) -> Result<String> {
    let runs: Vec<Run> = serde_json::from_value(data.clone())?;
    Ok(table(&runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(measure: &str, server: &str, key: &str, v: f64) -> Run {
        Run {
            measure: measure.into(),
            server: server.into(),
            round: 1,
            error: None,
            metrics: [(key.to_owned(), v)].into(),
            commands: vec![],
        }
    }

    #[test]
    fn table_has_medians_ratios_and_failures() {
        let mut runs = vec![
            run("4k-keepalive", "weir", "requests_per_s", 100.0),
            run("4k-keepalive", "weir", "requests_per_s", 300.0),
            run("4k-keepalive", "weir", "requests_per_s", 200.0),
            run("4k-keepalive", "nginx", "requests_per_s", 100.0),
        ];
        let mut failed = run("idle", "weir", "x", 0.0);
        failed.error = Some("starting weir with --tls-listen: unexpected argument".into());
        runs.push(failed);
        let t = table(&runs);
        assert!(
            t.contains(
                "| 4 KiB keep-alive | req/s | 200.0 | 100.0 | 2.00× | ≥ 1.0× | weir 3/3, nginx 1/1 |"
            ),
            "{t}"
        );
        assert!(t.contains("- idle weir round 1: starting weir"), "{t}");
        let back = table_from(&serde_json::to_value(&runs).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            openssl_suite("TLS13_AES_128_GCM_SHA256"),
            "TLS_AES_128_GCM_SHA256"
        );
    }
}
