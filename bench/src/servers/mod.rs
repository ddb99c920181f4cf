//! The servers under test: how each is set up once, started fresh for every measured run,
//! made ready (without sleeping), identified by PID, and stopped with SIGTERM.
pub mod nginx;
pub mod weir;

use anyhow::Result;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::child::signal;
use crate::fixture::Fixture;

/// Connection limit and timeouts shared by both servers so that 10,000 held connections stay
/// open: the memory scenarios need them and the throughput scenarios do not mind them.
pub const MAX_CONNECTIONS: usize = 20_000;
pub const KEEPALIVE_TIMEOUT_S: u64 = 600;
pub const SEND_TIMEOUT_S: u64 = 600;
pub const HEADER_TIMEOUT_S: u64 = 60;
pub const WORKERS: usize = 2;

/// A server configuration compared in a run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub enum Target {
    Weir { driver: String },
    Nginx,
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Weir { driver } => format!("weir-{driver}"),
            Target::Nginx => "nginx".to_owned(),
        }
    }

    pub fn is_nginx(&self) -> bool {
        matches!(self, Target::Nginx)
    }
}

/// What every target needs to start: the shared fixture and where logs go.
pub struct Setup {
    pub fixture: Fixture,
    pub weir: weir::WeirSetup,
    pub nginx: nginx::NginxSetup,
    pub log_dir: PathBuf,
}

impl Setup {
    /// Starts `target` and returns once it answers; `label` names its log files.
    pub fn start(&self, target: &Target, label: &str) -> Result<Running> {
        match target {
            Target::Weir { driver } => self.weir.start(driver, &self.log_dir, label),
            Target::Nginx => self.nginx.start(&self.fixture, &self.log_dir, label),
        }
    }
}

/// A started server.
pub struct Running {
    pub name: String,
    pub addr: SocketAddr,
    /// The exact command line it was started with.
    pub command: String,
    pub child: Child,
    /// `Authorization` header value for weir (Basic); None for nginx.
    pub authorization: Option<String>,
    /// Signed link paths by item id (weir); nginx serves `/d/<id>`.
    pub links: Vec<(String, String)>,
    /// nginx: the master's children (workers), found once it answered.
    pub workers: Vec<i32>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every process whose CPU and memory are the server's: weir's one process; nginx's
    /// master and workers.
    pub fn pids(&self) -> Vec<i32> {
        let mut v = vec![self.pid()];
        v.extend(&self.workers);
        v
    }

    /// Worker processes only (nginx's per-connection memory lives there); weir's one process.
    pub fn memory_pids(&self) -> Vec<i32> {
        if self.workers.is_empty() {
            vec![self.pid()]
        } else {
            self.workers.clone()
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Path of an item for clients that send the Authorization header (or need none).
    pub fn path(&self, id: &str) -> String {
        format!("/d/{id}")
    }

    /// Full URL for a download manager: weir's signed link (what a shop hands out), nginx's path.
    pub fn link_url(&self, id: &str) -> String {
        let path = self
            .links
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.path(id));
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, then wait up to `grace`; SIGKILL if it is still there. Returns the exit status text.
    pub fn stop(mut self, grace: Duration) -> Result<String> {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.to_string());
            }
            if Instant::now() >= deadline {
                signal(self.child.id(), libc::SIGKILL);
                let st = self.child.wait()?;
                return Ok(format!("{st} (SIGKILL after {grace:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A server left behind by an error path: ours, so stop it.
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
