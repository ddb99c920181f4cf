//! nginx: our own instance in a prefix directory, on a free loopback port, serving a document
//! root with sendfile; ready when it answers a GET and all its workers exist. One configuration
//! for every benchmark, with the few knobs they differ in ([`Options`]).
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    spawn, Running, Session, HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_CONNECTIONS,
    SEND_TIMEOUT_S, WORKERS,
};
use crate::child::render;
use crate::procfs::children;

/// What a benchmark asks of nginx beyond the shared configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `limit_rate` (bytes/s per connection) on every path: nginx's answer to shaping.
    pub limit_rate: Option<u64>,
    /// Also serve the root under `/slow/` at 2 KiB/s per connection, so that downloads stay
    /// open for a whole run (connection-count runs).
    pub slow_path: bool,
    /// Where it runs for the scheduler (default: its own session, as `daemon on` puts it).
    pub session: Option<Session>,
    /// Worker processes [default: [`WORKERS`], as many as weir's worker threads].
    pub workers: Option<usize>,
    /// Serve HTTPS only, with this certificate (the `tls` benchmark).
    pub tls: Option<Tls>,
}

/// nginx's `ssl` settings for the `tls` benchmark: the same certificate and cipher suite as
/// weir, no session resumption (every new connection a full handshake, as weir-load asks).
#[derive(Clone, Debug)]
pub struct Tls {
    /// Full chain, PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// OpenSSL's TLS 1.3 suite names (`TLS_AES_128_GCM_SHA256`).
    pub ciphersuites: String,
}

pub struct NginxSetup {
    pub bin: PathBuf,
    pub prefix: PathBuf,
    /// The document root: `/X` is `root/X`.
    pub root: PathBuf,
}

/// The configuration, with the port filled in. `reuseport` gives each worker its own accept
/// queue as weir's SO_REUSEPORT listeners do; `open_file_cache` keeps file descriptors open
/// across requests as weir keeps its mappings: both are the usual tuning for this load.
pub fn config(prefix: &Path, root: &Path, port: u16, opts: &Options) -> String {
    let p = prefix.display();
    let r = root.display();
    let limit = opts
        .limit_rate
        .map(|l| format!(" limit_rate {l};"))
        .unwrap_or_default();
    let slow = if opts.slow_path {
        format!("\n    location /slow/ {{ alias {r}/; limit_rate 2k; }}")
    } else {
        String::new()
    };
    let workers = opts.workers.unwrap_or(WORKERS);
    let (ssl, ssl_conf) = match &opts.tls {
        Some(t) => (
            " ssl",
            format!(
                "\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    \
                 ssl_conf_command Ciphersuites {};\n    \
                 ssl_session_tickets off;\n    ssl_session_cache off;",
                t.cert.display(),
                t.key.display(),
                t.ciphersuites
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        "worker_processes {workers};
worker_rlimit_nofile {MAX_CONNECTIONS};
error_log {p}/error.log;
pid {p}/nginx.pid;
events {{ worker_connections {MAX_CONNECTIONS}; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;
  send_timeout {SEND_TIMEOUT_S}s;
  client_header_timeout {HEADER_TIMEOUT_S}s;
  open_file_cache max=1000 inactive={KEEPALIVE_TIMEOUT_S}s;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port}{ssl} reuseport backlog=4096;{ssl_conf}
    root {r};
    location / {{{limit} }}{slow}
  }}
}}
"
    )
}

impl NginxSetup {
    /// nginx from PATH, its prefix under `work`, serving `root`.
    pub fn create(work: &Path, root: &Path) -> Result<NginxSetup> {
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp"))?;
        Ok(NginxSetup {
            bin: PathBuf::from("nginx"),
            prefix,
            root: root.to_owned(),
        })
    }

    pub fn start(&self, opts: &Options, log_dir: &Path, label: &str) -> Result<Running> {
        let port = crate::util::free_port()?;
        let conf = self.prefix.join("nginx.conf");
        let text = config(&self.prefix, &self.root, port, opts);
        std::fs::write(&conf, &text)?;
        std::fs::write(log_dir.join("nginx.conf"), &text)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(self.prefix.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(
                log_dir.join(format!("{label}.stdout")),
            )?)
            .stderr(std::fs::File::create(
                log_dir.join(format!("{label}.stderr")),
            )?);
        let command = render(&cmd);
        let child = spawn(&mut cmd, opts.session.unwrap_or(Session::Own))?;
        let mut running = Running {
            name: "nginx".to_owned(),
            addr: format!("127.0.0.1:{port}").parse()?,
            command,
            child,
            authorization: None,
            links: Vec::new(),
            workers: Vec::new(),
        };
        // Ready = a GET answered (any status: the root has no index) and all workers exist.
        // The listener is bound by the master before it forks, so a connect alone would not
        // prove a worker is serving.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = running.child.try_wait()? {
                bail!(
                    "nginx exited ({st}) while starting; see {}/{label}.stderr and {}/error.log",
                    log_dir.display(),
                    self.prefix.display()
                );
            }
            if crate::client::get(running.addr, "/", None, None).is_ok() {
                let w = children(running.pid());
                if w.len() == opts.workers.unwrap_or(WORKERS) {
                    running.workers = w;
                    return Ok(running);
                }
            }
            if Instant::now() >= deadline {
                bail!("nginx not ready after 20 s on {}", running.addr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_land_in_the_config() {
        let plain = config(Path::new("/p"), Path::new("/r"), 8080, &Options::default());
        assert!(plain.contains("listen 127.0.0.1:8080 reuseport"));
        assert!(!plain.contains("limit_rate"));
        let o = Options {
            limit_rate: Some(6554),
            slow_path: true,
            session: None,
            workers: Some(3),
            tls: None,
        };
        let shaped = config(Path::new("/p"), Path::new("/r"), 8080, &o);
        assert!(shaped.contains("location / { limit_rate 6554; }"));
        assert!(shaped.contains("worker_processes 3;"));
        assert!(shaped.contains("location /slow/ { alias /r/; limit_rate 2k; }"));
        let tls = Options {
            tls: Some(Tls {
                cert: "/c/full.pem".into(),
                key: "/c/key.pem".into(),
                ciphersuites: "TLS_AES_128_GCM_SHA256".into(),
            }),
            ..Options::default()
        };
        let tls = config(Path::new("/p"), Path::new("/r"), 8443, &tls);
        assert!(tls.contains("listen 127.0.0.1:8443 ssl reuseport"));
        assert!(tls.contains("ssl_certificate /c/full.pem;"));
        assert!(tls.contains("ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;"));
    }
}
