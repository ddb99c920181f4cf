//! The big file as 40 ranged curl processes, one range each, bodies to /dev/null.
use anyhow::Result;
use std::process::Command;
use std::time::Duration;

use super::{Ctx, Outcome, GIB};
use crate::child::{render, run_all};
use crate::procfs::cpu_seconds;
use crate::servers::Running;

pub const PARTS: u64 = 40;

/// `parts` contiguous inclusive ranges covering `len` bytes.
pub fn split(len: u64, parts: u64) -> Vec<(u64, u64)> {
    let parts = parts.min(len).max(1);
    let base = len / parts;
    let extra = len % parts;
    let mut out = Vec::with_capacity(parts as usize);
    let mut start = 0;
    for i in 0..parts {
        let n = base + u64::from(i < extra);
        out.push((start, start + n - 1));
        start += n;
    }
    out
}

pub fn run(ctx: &Ctx, srv: &Running) -> Result<Outcome> {
    let big = &ctx.fixture.big;
    let url = srv.link_url(&big.id);
    let ranges = split(big.len, PARTS);
    let mut o = Outcome::default();
    let cmds: Vec<Command> = ranges
        .iter()
        .map(|(a, b)| {
            let mut c = Command::new("curl");
            c.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                "-r",
            ])
            .arg(format!("{a}-{b}"))
            .arg(&url);
            c
        })
        .collect();
    o.commands.push(format!(
        "{} (and 39 more ranges, all started at once)",
        render(&cmds[0])
    ));
    let pids = srv.pids();
    let cpu0 = cpu_seconds(&pids)?;
    let (fin, wall) = run_all(cmds, Duration::from_secs(300))?;
    let cpu1 = cpu_seconds(&pids)?;
    let mut total = 0u64;
    for (f, (a, b)) in fin.iter().zip(&ranges) {
        let text = String::from_utf8_lossy(&f.output.stdout);
        let mut it = text.split_whitespace();
        let code = it.next().unwrap_or("");
        let size: u64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        total += size;
        if !f.output.status.success() || code != "206" || size != b - a + 1 {
            o.problem(format!(
                "range {a}-{b}: curl {} status {code} size {size}",
                f.output.status
            ));
        }
    }
    let secs = wall.as_secs_f64();
    o.metric("gb_per_s", total as f64 / secs / 1e9);
    o.metric("wall_s", secs);
    o.metric("bytes", total as f64);
    o.metric("cpu_s", cpu1 - cpu0);
    o.metric("cpu_s_per_gib", (cpu1 - cpu0) / (total as f64 / GIB));
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_exactly() {
        for (len, parts) in [(1u64 << 30, 40u64), (1000, 40), (5, 40), (41, 40)] {
            let r = split(len, parts);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().unwrap().1, len - 1);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
    }
}
