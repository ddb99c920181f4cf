//! nginx: our own instance in a prefix directory, on a free loopback port, serving the
//! fixture's root with sendfile; ready when it answers a GET and both workers exist.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Running, HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_CONNECTIONS, SEND_TIMEOUT_S, WORKERS,
};
use crate::child::render;
use crate::fixture::{Fixture, SMALL};
use crate::procfs::children;

pub struct NginxSetup {
    pub bin: PathBuf,
    pub prefix: PathBuf,
}

/// The configuration, with the port filled in. `reuseport` gives each worker its own accept
/// queue as weir's SO_REUSEPORT listeners do; `open_file_cache` keeps file descriptors open
/// across requests as weir keeps its mappings: both are the usual tuning for this load.
pub fn config(prefix: &Path, root: &Path, port: u16) -> String {
    let p = prefix.display();
    format!(
        "worker_processes {WORKERS};
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
    listen 127.0.0.1:{port} reuseport;
    root {root};
  }}
}}
",
        root = root.display()
    )
}

impl NginxSetup {
    pub fn create(work: &Path) -> Result<NginxSetup> {
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let bin = PathBuf::from("nginx");
        Ok(NginxSetup { bin, prefix })
    }

    pub fn start(&self, fixture: &Fixture, log_dir: &Path, label: &str) -> Result<Running> {
        let port = crate::util::free_port()?;
        let conf = self.prefix.join("nginx.conf");
        let text = config(&self.prefix, &fixture.root, port);
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
        let child = cmd.spawn().with_context(|| format!("starting {command}"))?;
        let mut running = Running {
            name: "nginx".to_owned(),
            addr: format!("127.0.0.1:{port}").parse()?,
            command,
            child,
            authorization: None,
            links: Vec::new(),
            workers: Vec::new(),
        };
        // Ready = a GET answered 200 and both workers exist. The listener is bound by the
        // master before it forks, so a connect alone would not prove a worker is serving.
        let deadline = Instant::now() + Duration::from_secs(20);
        let path = running.path(SMALL);
        loop {
            if let Some(st) = running.child.try_wait()? {
                bail!(
                    "nginx exited ({st}) while starting; see {}/{label}.stderr and {}/error.log",
                    log_dir.display(),
                    self.prefix.display()
                );
            }
            if let Ok((200, _)) = crate::client::get(running.addr, &path, None, None) {
                let w = children(running.pid());
                if w.len() == WORKERS {
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
