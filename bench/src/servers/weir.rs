//! weir: a data directory with one user, the fixture's items in that user's cart and signed
//! links for them; `weir serve` started per run and ready when it prints `listening on`.
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{
    spawn, Running, Session, HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_CONNECTIONS,
    SEND_TIMEOUT_S, WORKERS,
};
use crate::child::render;
use crate::fixture::Fixture;
use crate::util::basic_auth;

pub const USER: &str = "alice";

pub struct WeirSetup {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub password: String,
    pub items: Vec<String>,
    pub links: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    /// The setup commands, for the README (password shown as PASS).
    pub setup_commands: Vec<String>,
}

/// Runs one administrative `weir` command (`user add`, `item add`, `cart add`, `token`, ...)
/// against `data_dir`, feeding `stdin` if given; returns its stdout, or fails with its stderr.
pub fn admin(bin: &Path, data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", render(&cmd)))?;
    if let Some(input) = stdin {
        writeln!(child.stdin.take().context("stdin")?, "{input}")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            render(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts `weir ARGS` (a `serve` command line) through [`super::spawn`], its stdout in
/// `LOG_DIR/LABEL.stdout` and stderr in `LOG_DIR/LABEL.stderr`; returns once it printed
/// `listening on http://ADDR`.
pub fn serve(
    bin: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log_dir: &Path,
    label: &str,
) -> Result<Running> {
    serve_until(bin, args, env, log_dir, label, "http")
}

/// [`serve`], ready when weir prints `listening on SCHEME://ADDR` (`https` for its TLS
/// listener); that address is the one returned.
pub fn serve_until(
    bin: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log_dir: &Path,
    label: &str,
    scheme: &str,
) -> Result<Running> {
    let marker = format!("{scheme}://");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(
            log_dir.join(format!("{label}.stderr")),
        )?);
    let command = render(&cmd);
    let mut child = spawn(&mut cmd, Session::Own)?;
    let stdout = child.stdout.take().context("weir stdout")?;
    let (tx, rx) = mpsc::channel();
    let mut log = std::fs::File::create(log_dir.join(format!("{label}.stdout")))?;
    // Reads stdout until EOF: the first `listening on` line is the readiness signal, the
    // rest is kept so the pipe never fills.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if !sent && line.contains("listening on") {
                if let Some(rest) = line.split(marker.as_str()).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let mut running = Running {
        name: "weir".to_owned(),
        addr: "127.0.0.1:0".parse()?,
        command,
        child,
        authorization: None,
        links: Vec::new(),
        workers: Vec::new(),
    };
    // Ready when the line comes; failed when weir exits first (an unknown flag, a bad
    // certificate) or says nothing for a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let exited = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => break a,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => running.child.try_wait()?.is_some(),
        };
        if exited || std::time::Instant::now() >= deadline {
            let st = if exited {
                Some(running.child.wait()?)
            } else {
                None
            };
            let err = std::fs::read_to_string(log_dir.join(format!("{label}.stderr")))
                .unwrap_or_default();
            // Its error line (clap's `error: ...`, a log line with ERROR), else its last line.
            let why = err
                .lines()
                .find(|l| l.starts_with("error") || l.contains("ERROR"))
                .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("");
            bail!(
                "weir did not print `listening on {scheme}://` (exit: {st:?}): {why} (see {}/{label}.stderr)",
                log_dir.display()
            );
        }
    };
    running.addr = addr
        .parse::<SocketAddr>()
        .with_context(|| format!("weir printed listening on {addr:?}"))?;
    Ok(running)
}

impl WeirSetup {
    /// Creates the data directory: user, items (imported into weir's content store), cart,
    /// and one signed link per item valid for a day.
    pub fn create(
        bin: &Path,
        data_dir: &Path,
        fixture: &Fixture,
        extra_args: Vec<String>,
    ) -> Result<WeirSetup> {
        let data_dir = data_dir.to_owned();
        let password = format!("bench-{}", std::process::id());
        let mut setup_commands = Vec::new();
        let mut run = |args: &[&str], stdin: Option<&str>| -> Result<String> {
            setup_commands.push(format!(
                "{}{} {} --data-dir {}",
                if stdin.is_some() { "echo PASS | " } else { "" },
                bin.display(),
                args.join(" "),
                data_dir.display()
            ));
            admin(bin, &data_dir, args, stdin)
        };
        run(&["user", "add", USER, "--password-stdin"], Some(&password))?;
        let mut items = Vec::new();
        let mut links = Vec::new();
        for f in [&fixture.big, &fixture.small] {
            let p = f.path.to_string_lossy().into_owned();
            run(&["item", "add", &f.id, &p], None)?;
            run(&["cart", "add", USER, &f.id], None)?;
            let link = run(
                &["token", "--user", USER, "--item", &f.id, "--ttl", "86400"],
                None,
            )?;
            if !link.starts_with('/') {
                bail!("weir token printed {link:?}, expected a path");
            }
            items.push(f.id.clone());
            links.push((f.id.clone(), link));
        }
        Ok(WeirSetup {
            bin: bin.to_owned(),
            data_dir,
            password,
            items,
            links,
            extra_args,
            setup_commands,
        })
    }

    pub fn authorization(&self) -> String {
        basic_auth(USER, &self.password)
    }

    /// The `weir serve` arguments for one driver.
    pub fn serve_args(&self, driver: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "serve",
            "--data-dir",
            &self.data_dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &WORKERS.to_string(),
            "--driver",
            driver,
            "--max-connections",
            &MAX_CONNECTIONS.to_string(),
            "--idle-timeout",
            &format!("{KEEPALIVE_TIMEOUT_S}s"),
            "--send-timeout",
            &format!("{SEND_TIMEOUT_S}s"),
            "--header-timeout",
            &format!("{HEADER_TIMEOUT_S}s"),
            // Downloads complete (accounting stays on, as in production); a long grace keeps
            // completed items downloadable for the next run.
            "--grace",
            "24h",
            "--drain-timeout",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.extra_args.iter().cloned());
        a
    }

    pub fn start(&self, driver: &str, log_dir: &Path, label: &str) -> Result<Running> {
        // A completed download leaves the cart; put the items back so every run starts alike.
        for id in &self.items {
            admin(&self.bin, &self.data_dir, &["cart", "add", USER, id], None)?;
        }
        let mut running = serve(&self.bin, &self.serve_args(driver), &[], log_dir, label)?;
        running.name = format!("weir-{driver}");
        running.authorization = Some(self.authorization());
        running.links = self.links.clone();
        Ok(running)
    }
}
