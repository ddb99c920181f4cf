//! Running client tools (axel, curl, wrk) with a deadline, and stopping our own servers.
//! Only PIDs this process spawned are ever signalled.
use anyhow::{Context, Result};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sends `sig` to a PID we started.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; callers pass only PIDs of children
    // this process spawned and has not yet reaped, so the PID cannot name a stranger.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// One finished command: its output and when it exited, counted from the common start.
pub struct Finished {
    pub output: Output,
    pub elapsed: Duration,
}

/// Renders a command the way a shell user would type it (for the README and raw JSON).
pub fn render(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            && !a.is_empty()
        {
            parts.push(a.into_owned());
        } else {
            parts.push(format!("'{}'", a.replace('\'', r"'\''")));
        }
    }
    parts.join(" ")
}

/// Starts all commands at once (stdout and stderr captured) and waits for every one, killing
/// any still running at the deadline. Results are in the order of `cmds`.
pub fn run_all(cmds: Vec<Command>, timeout: Duration) -> Result<(Vec<Finished>, Duration)> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut pids = Vec::with_capacity(cmds.len());
    for (i, mut cmd) in cmds.into_iter().enumerate() {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child: Child = cmd
            .spawn()
            .with_context(|| format!("starting {}", render(&cmd)))?;
        pids.push(child.id());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send((i, out, Instant::now()));
        });
    }
    drop(tx);
    let n = pids.len();
    let mut done: Vec<Option<Finished>> = (0..n).map(|_| None).collect();
    let deadline = start + timeout;
    let mut killed = false;
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(if killed {
            Duration::from_secs(10)
        } else {
            left
        }) {
            Ok((i, out, at)) => {
                let output = out.context("waiting for a client")?;
                done[i] = Some(Finished {
                    output,
                    elapsed: at - start,
                });
                got += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !killed => {
                for (i, pid) in pids.iter().enumerate() {
                    if done[i].is_none() {
                        signal(*pid, libc::SIGKILL);
                    }
                }
                killed = true;
            }
            Err(_) => anyhow::bail!("clients did not exit even after SIGKILL"),
        }
    }
    let wall = done
        .iter()
        .flatten()
        .map(|f| f.elapsed)
        .max()
        .unwrap_or_default();
    let out = done.into_iter().map(|f| f.expect("all received")).collect();
    if killed {
        anyhow::bail!("clients killed after the {timeout:?} deadline");
    }
    Ok((out, wall))
}
