//! Helpers shared by the end-to-end tests: build and locate the binaries, start `weir serve` on
//! a fresh data directory and a port the kernel picks, run the CLI, and use real clients.
//!
//! The server prints `listening on http://ADDR` once bound; tests read that line instead of
//! sleeping. Every server a test starts is killed by PID when its handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
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

/// A data directory with the CLI pointed at it.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl DataDir {
    pub fn new() -> DataDir {
        DataDir {
            dir: tempfile::Builder::new()
                .prefix("weir-e2e-")
                .tempdir()
                .expect("tempdir"),
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

    pub fn start(&self, extra: &[&str]) -> Server {
        Server::start(&self.path().join("data"), extra, &[])
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

/// The drivers every end-to-end test runs against.
pub const DRIVERS: &[(&str, &[&str])] = &[
    ("uring", &["--driver", "uring"]),
    (
        "uring-minimal",
        &["--driver", "uring", "--uring-features", "minimal"],
    ),
    ("epoll", &["--driver", "epoll"]),
];
