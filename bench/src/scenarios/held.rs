//! Memory of held connections: N idle keep-alive connections, or N downloads that stop
//! reading. The connections are plain std TcpStreams of this process, opened one after the
//! other (blocking, with timeouts), then switched to non-blocking and left alone.
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{Ctx, Outcome};
use crate::client;
use crate::procfs::{fd_count, page_size, Memory, PortQueues, SockStat};
use crate::servers::Running;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Stalled,
}

/// Body bytes a stalled client reads before it stops reading.
pub const STALL_AFTER_BYTES: u64 = 16 * 1024;

#[derive(Debug, Serialize)]
struct Snapshot {
    at_s: f64,
    memory: Memory,
    sockstat: SockStat,
    queues: PortQueues,
    fds: u64,
}

fn snapshot(srv: &Running, t0: Instant) -> Result<Snapshot> {
    let pids = srv.memory_pids();
    Ok(Snapshot {
        at_s: t0.elapsed().as_secs_f64(),
        memory: Memory::of(&pids)?,
        sockstat: SockStat::read()?,
        queues: PortQueues::read(srv.port())?,
        fds: fd_count(&pids),
    })
}

/// Samples `f` every 500 ms until the last 4 samples are within 1% of their mean (or `limit`
/// passes). Returns the samples and whether they settled.
pub fn settle(limit: Duration, mut f: impl FnMut() -> Result<f64>) -> Result<(Vec<f64>, bool)> {
    let start = Instant::now();
    let mut v = Vec::new();
    loop {
        v.push(f()?);
        if v.len() >= 4 {
            let w = &v[v.len() - 4..];
            let mean = w.iter().sum::<f64>() / 4.0;
            let spread = w.iter().fold(0.0f64, |a, x| a.max((x - mean).abs()));
            if spread <= 0.01 * mean.abs().max(1.0) {
                return Ok((v, true));
            }
        }
        if start.elapsed() >= limit {
            return Ok((v, false));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn open_one(srv: &Running, mode: Mode, request: &[u8]) -> Result<TcpStream> {
    let mut s = client::connect(srv.addr, Duration::from_secs(30))?;
    s.write_all(request)?;
    let (status, len, have) = client::read_head(&mut s)?;
    anyhow::ensure!(status == 200, "status {status}, expected 200");
    match mode {
        Mode::Idle => client::discard(&mut s, len.saturating_sub(have))?,
        Mode::Stalled => client::discard(&mut s, STALL_AFTER_BYTES.saturating_sub(have))?,
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

pub fn run(ctx: &Ctx, srv: &Running, mode: Mode) -> Result<Outcome> {
    let n = ctx.plan.conns;
    let mut o = Outcome::default();
    let id = match mode {
        Mode::Idle => &ctx.fixture.small.id,
        Mode::Stalled => &ctx.fixture.big.id,
    };
    let request = client::request(&srv.path(id), srv.authorization.as_deref(), None);
    o.commands.push(format!(
        "(in-process) {n} × connect 127.0.0.1:{}; send {:?}; {}",
        srv.port(),
        request,
        match mode {
            Mode::Idle => "read the response fully; hold the connection idle".to_owned(),
            Mode::Stalled => format!("read {STALL_AFTER_BYTES} bytes; never read again"),
        }
    ));
    let t0 = Instant::now();
    let before = snapshot(srv, t0)?;
    let mut conns = Vec::with_capacity(n);
    let mut open_errors = 0usize;
    let mut first_error = None;
    for _ in 0..n {
        match open_one(srv, mode, request.as_bytes()) {
            Ok(s) => conns.push(s),
            Err(e) => {
                open_errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                if open_errors > n / 100 + 10 {
                    break;
                }
            }
        }
    }
    let opened_s = t0.elapsed().as_secs_f64();
    o.metric("open_s", opened_s);
    if open_errors > 0 {
        o.problem(format!(
            "{open_errors} connections failed to open; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    // Idle: wait for the server's memory to settle. Stalled: for the kernel's TCP memory
    // (the send queues filling) to settle, which also settles the server.
    let limit = Duration::from_secs(120);
    let (samples, settled) = match mode {
        Mode::Idle => settle(limit, || {
            Ok(Memory::of(&srv.memory_pids())?.rss_anon_kib as f64)
        })?,
        Mode::Stalled => settle(limit, || Ok(SockStat::read()?.tcp_mem_pages as f64))?,
    };
    o.detail("settle_samples", &samples);
    if !settled {
        o.problem(format!("did not settle within {limit:?}"));
    }
    let after = snapshot(srv, t0)?;
    // Connections still open from both ends, by the kernel's count.
    let held = after.queues.client_sockets.min(after.queues.server_sockets) as usize;
    o.metric("connections_requested", n as f64);
    o.metric("connections_opened", conns.len() as f64);
    o.metric("connections_established", held as f64);
    if held < conns.len() {
        o.problem(format!(
            "only {held} of {} opened connections are still established",
            conns.len()
        ));
    }
    let per = conns.len().max(1) as f64;
    let kib = |a: u64, b: u64| (a as f64 - b as f64) / per;
    o.metric(
        "rss_anon_kib_per_conn",
        kib(after.memory.rss_anon_kib, before.memory.rss_anon_kib),
    );
    o.metric(
        "rss_file_kib_per_conn",
        kib(after.memory.rss_file_kib, before.memory.rss_file_kib),
    );
    o.metric(
        "tcp_mem_kib_per_conn",
        kib(after.sockstat.tcp_mem_pages, before.sockstat.tcp_mem_pages) * page_size() as f64
            / 1024.0,
    );
    o.metric(
        "server_sendq_kib_per_conn",
        after.queues.server_tx_queue_bytes as f64 / per / 1024.0,
    );
    o.metric(
        "client_recvq_kib_per_conn",
        after.queues.client_rx_queue_bytes as f64 / per / 1024.0,
    );
    o.metric("fds_per_conn", kib(after.fds, before.fds));
    o.metric("rss_anon_kib_before", before.memory.rss_anon_kib as f64);
    o.metric("rss_anon_kib_after", after.memory.rss_anon_kib as f64);
    o.metric("tcp_mem_pages_before", before.sockstat.tcp_mem_pages as f64);
    o.metric("tcp_mem_pages_after", after.sockstat.tcp_mem_pages as f64);
    o.detail("before", &before);
    o.detail("after", &after);
    o.detail(
        "tcp_mem_sysctl_pages",
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
            .context("tcp_mem")?
            .trim(),
    );
    drop(conns);
    Ok(o)
}
