//! The servers under test: how each is set up once, started fresh for every measured run,
//! made ready (without sleeping), identified by PID, and stopped with SIGTERM.
//!
//! This is the only place a server process is started: [`spawn`] runs it the way a daemon or
//! a systemd unit would, in a session of its own (so the CPU scheduler's autogroups split the
//! cores between server and load tool as they do in production), with the kernel asked to
//! SIGTERM it if the harness dies. [`Running::stop`] signals that one PID, never a name.
pub mod nginx;
pub mod weir;

use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
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

/// Where a server runs for the CPU scheduler. With autogroup scheduling (Linux's default on
/// desktops and many servers, `/proc/sys/kernel/sched_autogroup_enabled`) CPU time is shared
/// between sessions first, then between the threads of each; systemd's per-service cgroups do
/// the same. On two cores shared by server and client, that decides how the cores are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Session {
    /// Its own session: where nginx puts itself by default (`daemon on` calls `setsid`) and
    /// where a server runs in production, apart from whoever loads it.
    Own,
    /// The harness's session, shared with the load tool: every thread competes on its own.
    Shared,
}

/// Starts a server process: in its own session unless `session` says otherwise, and sent
/// SIGTERM by the kernel if the harness dies first (outside the harness's session a Ctrl-C
/// no longer reaches it).
pub fn spawn(cmd: &mut Command, session: Session) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let own = session == Session::Own;
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls, setsid(2) and prctl(2), both async-signal-safe; it allocates nothing and touches
    // no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if (own && libc::setsid() < 0)
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", crate::child::render(cmd)))
}

/// A server configuration compared in a run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub enum Target {
    /// One weir binary (`build` names it: empty for the only one, `before`/`after` in a
    /// before/after run) with one I/O driver.
    Weir {
        build: String,
        driver: String,
    },
    Nginx,
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Weir { build, driver } if build.is_empty() => format!("weir-{driver}"),
            Target::Weir { build, driver } if driver == "uring" => build.clone(),
            Target::Weir { build, driver } => format!("{build}-{driver}"),
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
    /// One prepared data directory per weir binary, by build name.
    pub weir: BTreeMap<String, weir::WeirSetup>,
    pub nginx: nginx::NginxSetup,
    pub log_dir: PathBuf,
}

impl Setup {
    /// Starts `target` and returns once it answers; `label` names its log files.
    pub fn start(&self, target: &Target, label: &str) -> Result<Running> {
        match target {
            Target::Weir { build, driver } => {
                let w = self
                    .weir
                    .get(build)
                    .with_context(|| format!("no weir build named {build:?}"))?;
                let mut r = w.start(driver, &self.log_dir, label)?;
                r.name = target.name();
                Ok(r)
            }
            Target::Nginx => self
                .nginx
                .start(&nginx::Options::default(), &self.log_dir, label),
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
