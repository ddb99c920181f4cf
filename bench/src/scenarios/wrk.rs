//! wrk on the big file (-c40) and on the 4 KiB file (-c100). A Lua `done` hook prints wrk's
//! exact counters and latency percentiles as one JSON line, so nothing is parsed from
//! wrk's rounded human-readable report.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::process::Command;
use std::time::Duration;

use super::{Ctx, Outcome, GIB};
use crate::child::{render, run_all};
use crate::procfs::cpu_seconds;
use crate::servers::Running;

/// The Lua script given to wrk with `-s`. It defines only `done`, so wrk still sends its
/// one pre-built request and its request path is unchanged.
pub const SCRIPT: &str = r#"-- weir-bench: wrk's summary as one JSON line
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%.0f,\"bytes\":%.0f,\"duration_us\":%.0f,\"connect_errors\":%.0f,\"read_errors\":%.0f,\"write_errors\":%.0f,\"status_errors\":%.0f,\"timeouts\":%.0f,\"latency_p50_us\":%.0f,\"latency_p90_us\":%.0f,\"latency_p99_us\":%.0f,\"latency_p999_us\":%.0f,\"latency_max_us\":%.0f,\"latency_mean_us\":%.1f}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"#;

#[derive(Debug, Deserialize, serde::Serialize)]
pub struct WrkSummary {
    pub requests: f64,
    pub bytes: f64,
    pub duration_us: f64,
    pub connect_errors: f64,
    pub read_errors: f64,
    pub write_errors: f64,
    /// Responses that were not 2xx/3xx.
    pub status_errors: f64,
    pub timeouts: f64,
    pub latency_p50_us: f64,
    pub latency_p90_us: f64,
    pub latency_p99_us: f64,
    pub latency_p999_us: f64,
    pub latency_max_us: f64,
    pub latency_mean_us: f64,
}

pub fn parse(stdout: &str) -> Result<WrkSummary> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .context("no WRKJSON line in wrk's output")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

/// Runs wrk against `path` with the server's Authorization header (the same header goes to
/// nginx, which ignores it, so both get identical requests).
fn wrk(
    ctx: &Ctx,
    srv: &Running,
    path: &str,
    conns: u32,
    extra: &[&str],
    o: &mut Outcome,
) -> Result<(WrkSummary, f64)> {
    let secs = ctx.plan.wrk_seconds;
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ])
    .args(extra)
    .arg("-s")
    .arg(&ctx.wrk_script);
    let auth = srv.authorization.clone().unwrap_or_else(|| {
        // nginx gets a header of the same shape, which it does not check.
        crate::util::basic_auth("alice", "unused")
    });
    cmd.arg("-H").arg(format!("Authorization: {auth}"));
    cmd.arg(format!("http://{}{path}", srv.addr));
    o.commands.push(render(&cmd));
    let pids = srv.pids();
    let cpu0 = cpu_seconds(&pids)?;
    let (fin, _) = run_all(vec![cmd], Duration::from_secs(secs + 60))?;
    let cpu1 = cpu_seconds(&pids)?;
    let out = &fin[0].output;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    o.detail("wrk_stdout", &stdout);
    if !out.status.success() {
        bail!(
            "wrk {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = parse(&stdout)?;
    if s.status_errors > 0.0 {
        o.problem(format!("{} non-2xx/3xx responses", s.status_errors));
    }
    if s.connect_errors + s.read_errors + s.write_errors > 0.0 {
        o.problem(format!(
            "socket errors: connect {} read {} write {}",
            s.connect_errors, s.read_errors, s.write_errors
        ));
    }
    o.metric("cpu_s", cpu1 - cpu0);
    Ok((s, cpu1 - cpu0))
}

pub fn run_big(ctx: &Ctx, srv: &Running) -> Result<Outcome> {
    let mut o = Outcome::default();
    let path = srv.path(&ctx.fixture.big.id);
    // A 1 GiB response takes seconds: wrk's default 2 s timeout would count them all.
    let (s, cpu) = wrk(ctx, srv, &path, 40, &["--timeout", "60s"], &mut o)?;
    let secs = s.duration_us / 1e6;
    o.metric("gb_per_s", s.bytes / secs / 1e9);
    o.metric("bytes", s.bytes);
    o.metric("responses_completed", s.requests);
    o.metric("cpu_s_per_gib", cpu / (s.bytes / GIB));
    o.detail("wrk", &s);
    Ok(o)
}

pub fn run_4k(ctx: &Ctx, srv: &Running) -> Result<Outcome> {
    let mut o = Outcome::default();
    let path = srv.path(&ctx.fixture.small.id);
    let (s, cpu) = wrk(ctx, srv, &path, 100, &[], &mut o)?;
    let secs = s.duration_us / 1e6;
    o.metric("requests_per_s", s.requests / secs);
    o.metric("latency_p50_ms", s.latency_p50_us / 1e3);
    o.metric("latency_p90_ms", s.latency_p90_us / 1e3);
    o.metric("latency_p99_ms", s.latency_p99_us / 1e3);
    o.metric("latency_max_ms", s.latency_max_us / 1e3);
    o.metric("timeouts", s.timeouts);
    o.metric("cpu_s_per_mreq", cpu / (s.requests / 1e6));
    o.detail("wrk", &s);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_json_line() {
        let out = "Running 1s test\n  Latency 1ms\nWRKJSON {\"requests\":10,\"bytes\":40960,\"duration_us\":1000000,\"connect_errors\":0,\"read_errors\":0,\"write_errors\":0,\"status_errors\":0,\"timeouts\":0,\"latency_p50_us\":100,\"latency_p90_us\":200,\"latency_p99_us\":300,\"latency_p999_us\":400,\"latency_max_us\":500,\"latency_mean_us\":120.5}\n";
        let s = parse(out).unwrap();
        assert_eq!(s.requests, 10.0);
        assert_eq!(s.latency_p99_us, 300.0);
    }
}
