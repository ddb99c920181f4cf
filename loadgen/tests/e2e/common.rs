//! Helpers: free ports, an nginx started as a child process with a generated config, driving the
//! CLI in-process, and a small JSON-schema checker for summary.json.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Is `prog` on PATH?
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(prog).is_file()
}

/// Run the CLI in-process.
pub fn run_cli(args: &[&str]) -> ExitCode {
    let mut argv = vec!["weir-load"];
    argv.extend_from_slice(args);
    let cli = weir_load::cli::Cli::try_parse_from(argv).expect("valid command line");
    weir_load::run(cli).expect("run")
}

/// A `forty` run: how many users on how many connections each, for how long, checked against
/// which SHA-256.
pub struct Forty<'a> {
    pub users: u32,
    pub connections: u32,
    pub duration: &'a str,
    pub sha256: &'a str,
}

impl Forty<'_> {
    /// `weir-load forty URL ... --no-progress --out OUT EXTRA`, in-process.
    pub fn run(&self, url: &str, out: &Path, extra: &[&str]) -> ExitCode {
        let (users, connections) = (self.users.to_string(), self.connections.to_string());
        let mut args = vec![
            "forty",
            url,
            "--users",
            &users,
            "--connections",
            &connections,
            "--duration",
            self.duration,
            "--sha256",
            self.sha256,
            "--no-progress",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_cli(&args)
    }
}

/// The weir-load binary, for tests of what the process itself does (exit codes, stderr,
/// `--processes`).
pub fn weir_load_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-load"))
}

/// Fail the test, saying how to fix it, when nginx is not installed: CI installs it, so a
/// missing nginx is a broken setup, never a pass.
pub fn require_nginx() {
    assert!(
        have("nginx"),
        "nginx is not installed: apt-get install nginx-light (CI installs it)"
    );
}

/// Read a results directory's summary.json as JSON.
pub fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A test CA and a server certificate it signed (ECDSA P-256, for 127.0.0.1 and localhost),
/// made with the openssl CLI in a fresh directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    /// Make a CA named `name` and its server certificate. Fails the test without openssl.
    pub fn new(name: &str) -> TestCa {
        assert!(
            have("openssl"),
            "openssl is not installed: apt-get install openssl"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let subj_ca = format!("/CN={name}");
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat()
            .into_iter()
            .chain(["-days", "2", "-subj", &subj_ca])
            .collect(),
            [
                &["req"],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat()
            .into_iter()
            .chain(["-subj", "/CN=localhost"])
            .collect(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(d)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TestCa { dir }
    }

    /// The CA certificate (what `--cacert` takes).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }
}

/// An nginx master started by a test; stopped (SIGTERM to its PID, then SIGKILL) on drop.
pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Serves HTTPS (with a [`TestCa`] certificate).
    pub tls: bool,
}

impl Nginx {
    /// Start nginx serving `files` from a fresh root, with extra `location` blocks. Fails the
    /// test when nginx is not installed.
    pub fn start(files: &[(&str, &[u8])], extra: &str) -> Nginx {
        Self::start_with(files, extra, None)
    }

    /// [`Nginx::start`] speaking HTTPS only, with `ca`'s server certificate.
    pub fn start_tls(files: &[(&str, &[u8])], extra: &str, ca: &TestCa) -> Nginx {
        Self::start_with(files, extra, Some(ca))
    }

    fn start_with(files: &[(&str, &[u8])], extra: &str, tls: Option<&TestCa>) -> Nginx {
        require_nginx();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = d.join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(d.join("tmp")).unwrap();
        for (name, data) in files {
            std::fs::write(root.join(name), data).unwrap();
        }
        let port = free_port();
        let (ssl, certs) = match tls {
            Some(ca) => {
                let (cert, key) = ca.server();
                (
                    " ssl",
                    format!(
                        "ssl_certificate {};\n ssl_certificate_key {};\n \
                         ssl_protocols TLSv1.2 TLSv1.3;\n",
                        cert.display(),
                        key.display()
                    ),
                )
            }
            None => ("", String::new()),
        };
        // Over TLS each line also says which protocol and suite the request came over.
        let ssl_log = if tls.is_some() {
            "$ssl_protocol/$ssl_cipher "
        } else {
            ""
        };
        let conf = format!(
            "worker_processes 2;\n\
             error_log {d}/error.log;\n\
             pid {d}/nginx.pid;\n\
             worker_rlimit_nofile 8192;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               log_format weir '$request $status $http_range {ssl_log}$remote_addr';\n\
               access_log {d}/access.log weir;\n\
               sendfile on;\n\
               keepalive_requests 100000;\n\
               client_body_temp_path {d}/tmp/body;\n\
               proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n\
               uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port}{ssl};\n\
                 {certs}\
                 root {root};\n\
                 {extra}\n\
               }}\n\
             }}\n",
            d = d.display(),
            root = root.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("nginx exited ({status}): {err}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            dir,
            port,
            tls: tls.is_some(),
        }
    }

    /// `http://127.0.0.1:PORT/path` (`https://` when it serves TLS).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/{}",
            if self.tls { "https" } else { "http" },
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Lines of the access log: `$request $status $http_range $remote_addr` (over TLS
    /// `$request $status $http_range $ssl_protocol/$ssl_cipher $remote_addr`).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A results directory inside the test's temp dir.
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("results").join(name)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Check `v` against the subset of JSON Schema that summary.schema.json uses (type, const, enum,
/// required, properties, additionalProperties, minimum, $ref to $defs). Returns the violations.
pub fn schema_violations(v: &Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(v, schema, schema, "$", &mut out);
    out
}

fn check(v: &Value, s: &Value, root: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return check(v, &root["$defs"][name], root, at, out);
    }
    if let Some(c) = s.get("const") {
        if v != c {
            out.push(format!("{at}: {v} != const {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push(format!("{at}: {v} is not {t}"));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            out.push(format!("{at}: {x} < minimum {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(k) {
                    out.push(format!("{at}: missing required {k}"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let path = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(val, ps, root, &path, out),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => out.push(format!("{path}: not allowed")),
                    Some(ap @ Value::Object(_)) => check(val, ap, root, &path, out),
                    _ => {}
                },
            }
        }
    }
}

/// The committed schema.
pub fn schema() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("summary.schema.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Assert that a results directory holds a complete, schema-valid result.
pub fn assert_result_dir(dir: &Path) -> Value {
    let s = summary(dir);
    let violations = schema_violations(&s, &schema());
    assert!(
        violations.is_empty(),
        "summary.json violates the schema: {violations:#?}"
    );
    for (_, f) in s["files"]["hgrm"].as_object().unwrap() {
        let text = std::fs::read_to_string(dir.join(f.as_str().unwrap())).unwrap();
        assert!(text.contains("1/(1-Percentile)") && text.contains("#[Buckets ="));
    }
    let hlog = std::fs::read_to_string(dir.join("intervals.hlog")).unwrap();
    assert!(hlog.contains("Tag="), "interval log has intervals");
    let plot = std::fs::read_to_string(dir.join("percentiles.svg")).unwrap();
    assert!(plot.starts_with("<svg"));
    s
}

/// What a test server read of one request head: `None` when the client closed the connection,
/// else the `Range` header resolved against a body of `len` bytes (`None` without one, or one
/// that does not fit).
pub fn read_request_range(
    reader: &mut std::io::BufReader<TcpStream>,
    len: u64,
) -> Option<Option<(u64, u64)>> {
    use std::io::BufRead;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some(range);
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = parse_range(v, len);
            }
        }
    }
}

/// `bytes=A-B` or `bytes=A-` within a body of `len` bytes.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() {
        len - 1
    } else {
        b.parse().ok()?
    };
    (a <= b && b < len).then_some((a, b.min(len - 1)))
}

/// Writes the head of a 206 for bytes `a..=b` of `data` and returns that body slice, or `None`
/// when the client is gone.
pub fn write_partial_head<'d>(
    out: &mut TcpStream,
    data: &'d [u8],
    (a, b): (u64, u64),
) -> Option<&'d [u8]> {
    use std::io::Write;
    let body = &data[a as usize..=b as usize];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n",
        body.len(),
        data.len()
    );
    out.write_all(head.as_bytes()).ok().map(|()| body)
}
