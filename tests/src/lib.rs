//! Helpers shared by the end-to-end tests: build and locate the binaries, start `weir serve` on
//! a fresh data directory and a port the kernel picks, on a named [`Driver`] (and
//! [`on_every_driver!`] to run a scenario on each), run the CLI, use real clients, and wait for
//! what the server does asynchronously ([`eventually`], [`Metrics`], socket queues).
//!
//! The server prints `listening on http://ADDR` once bound; tests read that line instead of
//! sleeping. Every server a test starts is killed by PID when its handle drops.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// `target/<profile>` of this build (the test binary lives in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path to a workspace binary, building it once if `cargo test` did not.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir().join(name);
    BUILT.get_or_init(|| {
        let profile_release = target_dir().ends_with("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--bins", "-p", "weir", "-p", "weir-load"]);
        if profile_release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build");
        assert!(st.success(), "cargo build of the binaries failed");
    });
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// Is an external client installed? Tests that need one fail loudly in CI (which installs them)
/// and say why.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Deterministic incompressible bytes (SplitMix64), so tests can write large files quickly.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut s = seed;
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open for hashing");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Tests run in parallel, but a test that measures rates or CPU time must not share two cores
/// with downloads at full speed: it holds this gate exclusively, every other test shares it
/// (taken by [`DataDir::new`]).
static GATE: RwLock<()> = RwLock::new(());

thread_local! {
    static EXCLUSIVE: Cell<bool> = const { Cell::new(false) };
}

/// Held by a timing-sensitive test for its whole duration (see [`GATE`]).
pub struct Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        EXCLUSIVE.with(|e| e.set(false));
    }
}

/// Run the calling test alone among the end-to-end tests.
pub fn exclusive() -> Exclusive {
    let guard = GATE.write().unwrap_or_else(|e| e.into_inner());
    EXCLUSIVE.with(|e| e.set(true));
    Exclusive(guard)
}

/// A data directory with the CLI pointed at it.
pub struct DataDir {
    pub dir: tempfile::TempDir,
    _gate: Option<RwLockReadGuard<'static, ()>>,
}

pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl DataDir {
    pub fn new() -> DataDir {
        let gate = if EXCLUSIVE.with(Cell::get) {
            None
        } else {
            Some(GATE.read().unwrap_or_else(|e| e.into_inner()))
        };
        DataDir {
            dir: tempfile::Builder::new()
                .prefix("weir-e2e-")
                .tempdir()
                .expect("tempdir"),
            _gate: gate,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run `weir ARGS --data-dir DIR` with optional stdin.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        let mut cmd = Command::new(bin("weir"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(self.path().join("data"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weir");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().expect("weir output");
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run the CLI and require success.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "weir {args:?} failed: {}\n{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Write a file of `len` deterministic bytes under the temp dir; returns its path.
    pub fn make_file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, pseudo_random(len, seed)).unwrap();
        p
    }

    /// Add user `name` with password `pw`.
    pub fn add_user(&self, name: &str, pw: &str) {
        self.ok(
            &["user", "add", name, "--password-stdin"],
            Some(&format!("{pw}\n")),
        );
    }

    /// Register `file` as item `id` and put it in `user`'s cart.
    pub fn add_item_for(&self, id: &str, file: &Path, user: &str) {
        self.ok(&["item", "add", id, file.to_str().unwrap()], None);
        self.ok(&["cart", "add", user, id], None);
    }

    /// Start `weir serve` on this data directory with `extra` flags (the default driver).
    pub fn start(&self, extra: &[&str]) -> Server {
        Server::start(&self.path().join("data"), extra, &[])
    }

    /// Start `weir serve` on `driver` with `extra` flags, and check it runs that driver.
    pub fn serve(&self, driver: Driver, extra: &[&str]) -> Server {
        self.serve_with(driver, extra, None)
    }

    /// As [`DataDir::serve`], optionally with `ulimit -n nofile`.
    pub fn serve_with(&self, driver: Driver, extra: &[&str], nofile: Option<u32>) -> Server {
        let mut args = driver.args().to_vec();
        args.extend_from_slice(extra);
        let srv = Server::start_with(&self.path().join("data"), &args, &[], nofile);
        driver.check_listen_line(&srv.listen_line);
        srv
    }

    /// Add alice (password wonderland) and `len` deterministic bytes as item `id` in her cart;
    /// returns the file's path.
    pub fn alice_with_item(&self, id: &str, len: usize, seed: u64) -> PathBuf {
        self.add_user("alice", "wonderland");
        let file = self.make_file(&format!("{id}.bin"), len, seed);
        self.add_item_for(id, &file, "alice");
        file
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `weir serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// What it printed before it was ready (banner, demo credentials).
    pub banner: Vec<String>,
    /// The `listening on http://ADDR (driver, N workers)` line.
    pub listen_line: String,
}

impl Server {
    /// Start `weir serve --data-dir DATA --listen 127.0.0.1:0 EXTRA` and wait for its banner.
    pub fn start(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with(data, extra, env, None)
    }

    /// As [`Server::start`], optionally under `sh -c 'ulimit -n N; exec ...'`.
    pub fn start_with(
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Server {
        Self::start_wrapped(data, extra, env, nofile, &[])
    }

    /// As [`Server::start_with`], with `wrapper` (a program and its arguments) exec'ing weir.
    pub fn start_wrapped(
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u32>,
        wrapper: &[&str],
    ) -> Server {
        let weir = bin("weir");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&weir)
                    .args(&args);
                c
            }
            None if !wrapper.is_empty() => {
                let mut c = Command::new(wrapper[0]);
                c.args(&wrapper[1..]).arg(&weir).args(&args);
                c
            }
            None => {
                let mut c = Command::new(&weir);
                c.args(&args);
                c
            }
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env(
            "WEIR_LOG",
            std::env::var("WEIR_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn weir serve");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut banner = Vec::new();
        let (addr, listen_line) = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read server stdout");
            assert!(n > 0, "weir serve exited before listening: {banner:?}");
            let line = line.trim_end().to_string();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break (addr.parse().expect("listen address"), line.clone());
            }
            banner.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server {
            child: Some(child),
            addr,
            banner,
            listen_line,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// The admin API's base URL (`http://ADDR`), from the banner of a server started with
    /// `--admin-listen`.
    pub fn admin_url(&self) -> String {
        self.banner
            .iter()
            .find_map(|l| l.split("admin API on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .expect("admin address in the banner (start with --admin-listen)")
            .to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Send `sig` to the server (only the PID this handle started).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a PID we spawned and still own; no memory is involved.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Wait for exit up to `limit`; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let st = self
            .wait_timeout(Duration::from_secs(30))
            .expect("weir did not exit after SIGTERM");
        self.child = None;
        st
    }

    /// Whether the process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `axel -q -n CONNS -o OUT URL`. axel 2.17 itself sometimes dies of SIGSEGV (seen
/// against nginx too); a run killed by a signal is retried once with a fresh output file. A
/// normal failing exit is returned as is.
pub fn axel(conns: u32, out: &Path, url: &str) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let mut status = None;
    for _ in 0..2 {
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(out.with_extension("st"));
        let st = Command::new("axel")
            .args(["-q", "-n", &conns.to_string(), "-o"])
            .arg(out)
            .arg(url)
            .status()
            .expect("run axel");
        if st.signal().is_none() {
            return st;
        }
        eprintln!("axel crashed ({st}); retrying once");
        status = Some(st);
    }
    status.unwrap()
}

/// `curl --limit-rate RATE -u CREDENTIALS` fetching `url` into a file, in the background; killed
/// when dropped.
pub struct SlowDownload {
    child: Child,
    out: PathBuf,
}

impl SlowDownload {
    /// Start the download, writing to `dir/slow.out`.
    pub fn start(dir: &Path, url: &str, credentials: &str, rate: &str) -> SlowDownload {
        let out = dir.join("slow.out");
        let child = Command::new("curl")
            .args(["-s", "--limit-rate", rate, "-u", credentials, "-o"])
            .arg(&out)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        SlowDownload { child, out }
    }

    /// Wait until body bytes have arrived (the download is under way on the server).
    pub fn wait_for_bytes(&self) {
        let flowing = eventually(Duration::from_secs(10), || {
            std::fs::metadata(&self.out).is_ok_and(|m| m.len() > 0)
        });
        assert!(flowing, "the download never got under way");
    }

    /// Wait for curl to end; whether it got the whole body (its exit status).
    pub fn finished_ok(mut self) -> bool {
        self.child.wait().expect("wait for curl").success()
    }

    /// Kill curl (a client cut mid-download) and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SlowDownload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of a curl call: HTTP status, headers and body.
pub struct CurlResult {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub exit: i32,
}

impl CurlResult {
    /// Value of the first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Run curl with `args` against `url`, capturing status, headers and body.
pub fn curl(url: &str, args: &[&str]) -> CurlResult {
    let tmp = tempfile::tempdir().unwrap();
    let hdr = tmp.path().join("h");
    let body = tmp.path().join("b");
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "60", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .arg("-w")
        .arg("%{http_code}")
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    CurlResult {
        status,
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Send raw bytes on a fresh connection and read the reply until the server closes it or
/// `limit` passes.
pub fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The status code of a raw HTTP response.
pub fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(&resp[..resp.len().min(64)]).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The user most tests create, as `user:password` for curl's `-u` and URLs.
pub const ALICE: &str = "alice:wonderland";

/// An `Authorization: Basic ...` header line (with its CRLF) for `user:password`, for requests
/// written on raw sockets.
pub fn basic_auth(credentials: &str) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, credentials);
    format!("Authorization: Basic {b64}\r\n")
}

/// A connection with `GET target` and `extra` header lines (each ending in CRLF) already sent.
pub fn get_on_raw_socket(addr: SocketAddr, target: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").expect("send request");
    s
}

/// Poll `cond` every 50 ms until it holds or `limit` passes; whether it held. For conditions
/// the server reaches asynchronously (journal flushes, timeouts, retries).
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample of the admin API's Prometheus text (`GET ADMIN/metrics` with a bearer token).
pub struct Metrics(pub String);

impl Metrics {
    pub fn fetch(admin: &str, token: &str) -> Metrics {
        let r = curl(
            &format!("{admin}/metrics"),
            &["-H", &format!("Authorization: Bearer {token}")],
        );
        assert_eq!(r.status, 200, "GET /metrics");
        Metrics(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of the series written exactly as `series` (name and labels), if present.
    pub fn get(&self, series: &str) -> Option<u64> {
        self.0.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            if name != series {
                return None;
            }
            value.parse::<f64>().ok().map(|v| v as u64)
        })
    }

    /// As [`Metrics::get`], panicking with the whole text when the series is missing.
    pub fn value(&self, series: &str) -> u64 {
        self.get(series)
            .unwrap_or_else(|| panic!("{series} missing in\n{}", self.0))
    }
}

/// Bytes waiting unread in a socket's receive queue (`FIONREAD`).
pub fn unread_bytes(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points to the live local `n`.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n
}

/// Wait (up to 20 s) until a connection the test does not read from has a full receive
/// buffer: bytes queued and no more arriving over 50 ms, so the server's window is zero.
pub fn wait_until_receive_buffer_full(s: &TcpStream) {
    let mut last = 0;
    let full = eventually(Duration::from_secs(20), || {
        let queued = unread_bytes(s);
        let settled = queued > 0 && queued == last;
        last = queued;
        settled
    });
    assert!(
        full,
        "the server never filled the receive buffer ({last} bytes queued)"
    );
}

/// The event loop a test's server runs on. Every end-to-end test that serves bytes runs once
/// per driver, as three named tests (see [`on_every_driver!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring with every feature the kernel offers (`--driver uring`).
    Uring,
    /// io_uring limited to what Linux 5.10 has (`--driver uring --uring-features minimal`).
    UringMinimal,
    /// epoll (`--driver epoll`).
    Epoll,
}

impl Driver {
    pub const ALL: [Driver; 3] = [Driver::Uring, Driver::UringMinimal, Driver::Epoll];

    /// The `weir serve` flags that select this driver.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Driver::Uring => &["--driver", "uring"],
            Driver::UringMinimal => &["--driver", "uring", "--uring-features", "minimal"],
            Driver::Epoll => &["--driver", "epoll"],
        }
    }

    /// Whether the server's `listening on ... (DRIVER, N workers)` line names this driver (a
    /// server that fell back to another driver would test the wrong code).
    pub fn check_listen_line(self, line: &str) {
        let want = match self {
            Driver::Uring | Driver::UringMinimal => "(io_uring",
            Driver::Epoll => "(epoll",
        };
        assert!(line.contains(want), "{self:?} wanted, server says: {line}");
        if self == Driver::UringMinimal && line.contains("multishot_accept=") {
            assert!(
                line.contains("multishot_accept=false"),
                "minimal io_uring uses no multishot accept: {line}"
            );
        }
    }
}

/// Expands scenarios `fn NAME(driver: Driver)` into one module of tests per scenario, with a
/// test per driver: `NAME::uring`, `NAME::uring_minimal`, `NAME::epoll` (filter with
/// `cargo test -p weir-tests -- NAME` or `-- ::epoll`).
///
/// ```ignore
/// fn statuses(driver: Driver) { /* ... */ }
/// weir_tests::on_every_driver!(statuses);
/// ```
#[macro_export]
macro_rules! on_every_driver {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn uring() {
                super::$scenario($crate::Driver::Uring)
            }
            #[test]
            fn uring_minimal() {
                super::$scenario($crate::Driver::UringMinimal)
            }
            #[test]
            fn epoll() {
                super::$scenario($crate::Driver::Epoll)
            }
        }
    )+};
}

/// Reads one webhook POST from a test receiver's connection: its `Idempotency-Key` (empty
/// when absent) and its body.
pub fn read_webhook_post(stream: &std::net::TcpStream) -> (String, Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the receiver's stream"));
    let (mut key, mut len) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("idempotency-key:") {
            key = line[line.len() - v.len()..].trim().to_string();
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    (key, body)
}

/// A top-level number in weir-load's `summary.json` (`"key": 12.5`).
pub fn summary_number(json: &str, key: &str) -> f64 {
    let k = format!("\"{key}\":");
    let rest = &json[json.find(&k).unwrap_or_else(|| panic!("{key} missing")) + k.len()..];
    let end = rest.find([',', '}', '\n']).unwrap();
    rest[..end].trim().parse().unwrap()
}
