//! `weir-load demo`: the README's first command once the engine serves.
//!
//! Starts `weir serve --data-dir <fresh temp dir> --listen 127.0.0.1:<free port>` (the `weir` next
//! to this executable, else on PATH, or `--weir`), reads its stdout until a line contains
//! `listening on http://`, taking the demo credentials from the line `demo credentials:
//! demo:PASSWORD` and the URL of `demo-64m` if a line names it. Then it runs `forty` against
//! `http://ADDR/d/demo-64m` with those credentials, prints the summary and the results directory,
//! sends SIGTERM to the server it started (that PID only), waits, and removes the data dir.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{Common, DemoArgs, FortyArgs};

/// What the server said before it was ready.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Banner {
    /// `demo:PASSWORD`.
    pub credentials: Option<String>,
    /// The URL of `demo-64m`, when printed.
    pub demo_url: Option<String>,
    /// The server said it listens.
    pub listening: bool,
}

impl Banner {
    /// Take what matters from one stdout line.
    pub fn feed(&mut self, line: &str) {
        if let Some(i) = line.find("demo credentials:") {
            let rest = line[i + "demo credentials:".len()..].trim();
            if let Some(tok) = rest.split_whitespace().next() {
                if tok.contains(':') {
                    self.credentials = Some(tok.to_string());
                }
            }
        }
        if line.contains("/d/demo-64m") {
            if let Some(url) = line
                .split_whitespace()
                .find(|t| t.starts_with("http://") && t.contains("/d/demo-64m"))
            {
                self.demo_url = Some(url.trim_end_matches(['.', ',', ')']).to_string());
            }
        }
        if line.contains("listening on http://") {
            self.listening = true;
        }
    }
}

/// The `weir` binary: `--weir`, else next to this executable (same target dir), else PATH.
pub fn find_weir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--weir {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        // Test binaries live in target/<profile>/deps; the binaries one level up.
        for d in [dir.clone(), dir.join("..")] {
            let p = d.join("weir");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("weir");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "no `weir` binary next to weir-load or on PATH (build it with `cargo build --release -p weir`, or pass --weir)"
    )
}

fn fresh_data_dir() -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("weir-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Stop the server we started: SIGTERM, then wait (SIGKILL after `grace`).
fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = crate::sys::terminate(child);
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("weir-load demo: the server did not stop within {grace:?} of SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// `weir-load demo`.
pub fn command(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let weir = find_weir(args.weir.as_deref())?;
    let data = fresh_data_dir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let log_path = data.join("weir-serve.stderr.log");
    let log = std::fs::File::create(&log_path)?;
    eprintln!(
        "weir-load demo: starting {} serve on {listen}",
        weir.display()
    );
    let mut child = Command::new(&weir)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(&listen)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", weir.display()))?;
    let result = drive(args, &mut child, &listen, &log_path);
    stop(&mut child, Duration::from_secs(40));
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn drive(args: &DemoArgs, child: &mut Child, listen: &str, log: &Path) -> anyhow::Result<ExitCode> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout after startup so the server never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep reading to drain.
                continue;
            }
        }
    });
    let deadline = Instant::now() + args.startup_timeout;
    let mut banner = Banner::default();
    while !banner.listening {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                println!("weir> {line}");
                banner.feed(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                anyhow::bail!(
                    "weir serve exited ({status}) before it listened; the end of its stderr:\n{}",
                    tail(log)
                );
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "weir serve exited ({status}) before it listened:\n{}",
                tail(log)
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "weir serve did not print `listening on http://` within {:?}:\n{}",
                args.startup_timeout,
                tail(log)
            );
        }
    }
    drop(rx);
    let credentials = banner.credentials.clone().ok_or_else(|| {
        anyhow::anyhow!("weir serve listened but printed no `demo credentials: demo:PASSWORD` line")
    })?;
    let url = banner
        .demo_url
        .clone()
        .unwrap_or_else(|| format!("http://{listen}/d/demo-64m"));
    println!(
        "weir-load demo: forty, {} users x {} connections for {:?} against {url}",
        args.users, args.connections, args.duration
    );
    let forty = FortyArgs {
        url,
        users: args.users,
        connections: args.connections,
        duration: args.duration,
        credentials: Some(credentials),
        credentials_file: None,
        sha256: None,
        reference_file: None,
        retry_for: None,
        events: None,
        gate: None,
        common: Common {
            stall_timeout: Duration::from_secs(10),
            source: None,
            out: Some(
                args.out
                    .clone()
                    .unwrap_or_else(|| crate::runner::default_out("demo")),
            ),
            workers: None,
            processes: 1,
            no_progress: args.no_progress,
            cacert: None,
            insecure: false,
            tls_ciphers: None,
            child: None,
        },
    };
    let (summary, dir) = crate::forty::command(&forty)?;
    print!("{}", summary.render());
    println!("  results: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_lines() {
        let mut b = Banner::default();
        b.feed("weir 0.1.0: data dir /tmp/x");
        b.feed("demo credentials: demo:s3cr3t-Pw");
        b.feed("demo item demo-64m: http://127.0.0.1:4321/d/demo-64m");
        assert!(!b.listening);
        b.feed("INFO weir: listening on http://127.0.0.1:4321 (2 workers, io_uring)");
        assert_eq!(
            b,
            Banner {
                credentials: Some("demo:s3cr3t-Pw".into()),
                demo_url: Some("http://127.0.0.1:4321/d/demo-64m".into()),
                listening: true,
            }
        );
        let mut b = Banner::default();
        b.feed("demo credentials: (none)");
        assert_eq!(b.credentials, None);
    }

    #[test]
    fn missing_weir_is_a_clear_error() {
        let e = find_weir(Some(Path::new("/nonexistent/weir"))).unwrap_err();
        assert!(e.to_string().contains("no such file"));
    }
}
