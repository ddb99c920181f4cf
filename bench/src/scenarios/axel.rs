//! The big file with `axel -n 40`, written to a tmpfs and hashed after timing.
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Duration;

use super::{Ctx, Outcome, GIB};
use crate::child::{render, run_all};
use crate::procfs::cpu_seconds;
use crate::servers::Running;

/// Bytes free on the filesystem holding `dir` (`df`, to stay free of unsafe statvfs).
fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("parsing df output")
}

pub fn run(ctx: &Ctx, srv: &Running) -> Result<Outcome> {
    let big = &ctx.fixture.big;
    let dir = ctx
        .axel_dir
        .join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let free = free_bytes(&dir)?;
    if free < big.len + (256 << 20) {
        bail!(
            "{} has {} MiB free; axel needs {} MiB",
            dir.display(),
            free >> 20,
            (big.len >> 20) + 256
        );
    }
    let out_file = dir.join("axel.out");
    let url = srv.link_url(&big.id);
    let mut o = Outcome::default();
    let pids = srv.pids();
    // axel 2.17 has crashed here now and then (SIGSEGV): one retry, recorded.
    let mut failures = Vec::new();
    let mut measured = false;
    for attempt in 1..=2 {
        let _ = std::fs::remove_file(&out_file);
        let _ = std::fs::remove_file(dir.join("axel.out.st"));
        let mut cmd = Command::new("axel");
        cmd.args(["-n", "40", "-q", "-o"]).arg(&out_file).arg(&url);
        o.commands.push(render(&cmd));
        let cpu0 = cpu_seconds(&pids)?;
        let (fin, wall) = run_all(vec![cmd], Duration::from_secs(300))?;
        let cpu1 = cpu_seconds(&pids)?;
        let f = &fin[0];
        let size = std::fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
        if !f.output.status.success() || size != big.len {
            failures.push(format!(
                "attempt {attempt}: axel {} wrote {size} of {} bytes: {}",
                f.output.status,
                big.len,
                String::from_utf8_lossy(&f.output.stderr).trim()
            ));
            continue;
        }
        let secs = wall.as_secs_f64();
        o.metric("gb_per_s", big.len as f64 / secs / 1e9);
        o.metric("wall_s", secs);
        o.metric("cpu_s", cpu1 - cpu0);
        o.metric("cpu_s_per_gib", (cpu1 - cpu0) / (big.len as f64 / GIB));
        let sha = crate::util::sha256_file(&out_file)?;
        o.metric("sha256_ok", f64::from(u8::from(sha == big.sha256)));
        o.detail("sha256", &sha);
        o.detail("attempt", attempt);
        if sha != big.sha256 {
            o.problem(format!("sha256 {sha} != {}", big.sha256));
        }
        measured = true;
        break;
    }
    if !failures.is_empty() {
        o.detail("failed_attempts", &failures);
    }
    if !measured {
        o.problem(format!("axel failed twice: {}", failures.join("; ")));
    }
    let _ = std::fs::remove_file(&out_file);
    let _ = std::fs::remove_file(dir.join("axel.out.st"));
    let _ = std::fs::remove_dir(&dir);
    Ok(o)
}
