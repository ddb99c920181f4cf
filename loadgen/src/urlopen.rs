//! `urlopen`: N loops ("threads" in the seed's test), each fetching the same URL in full, again
//! and again, until the run ends. Keep-alive by default (like wrk); `--no-keepalive` opens a new
//! connection per request (like Python's urlopen in the seed). With `--sha256` each response body
//! is hashed as it streams and compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::conn::Who;
use crate::errors::ErrorKind;
use crate::histograms::Metric;
use crate::http::Head;
use crate::retry::{Backoff, Retry};
use crate::stats::Live;
use crate::worker::{ConnId, Io, Scenario};

/// Settings shared by every loop.
#[derive(Clone)]
pub struct UrlopenConfig {
    /// The request head, built once (it never changes).
    pub request: Arc<[u8]>,
    pub keep_alive: bool,
    pub sha256: Option<[u8; 32]>,
}

/// Reconnecting after a failed request: 20 ms, doubling, at most 1 s.
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(10),
    doublings: 7,
    cap: Duration::from_secs(1),
};

struct Loop {
    conn: Option<ConnId>,
    started: Instant,
    ok_status: bool,
    sha: Option<Sha256>,
    retry: Retry,
}

/// The urlopen scenario for one worker's share of loops.
pub struct Urlopen {
    cfg: UrlopenConfig,
    loops: Vec<Loop>,
    retries_pending: usize,
}

impl Urlopen {
    /// `n` loops on this worker.
    pub fn new(cfg: UrlopenConfig, n: usize) -> Urlopen {
        let now = Instant::now();
        Urlopen {
            loops: (0..n)
                .map(|_| Loop {
                    conn: None,
                    started: now,
                    ok_status: false,
                    sha: None,
                    retry: Retry::default(),
                })
                .collect(),
            cfg,
            retries_pending: 0,
        }
    }

    fn open(&mut self, io: &mut Io, l: usize) {
        let id = io.open(Who {
            owner: l as u32,
            tag: 0,
        });
        self.loops[l].conn = Some(id);
    }

    fn send(&mut self, io: &mut Io, l: usize, id: ConnId) {
        let lp = &mut self.loops[l];
        lp.started = io.now;
        let req = &self.cfg.request;
        io.send(id, self.cfg.keep_alive, |b| b.extend_from_slice(req));
    }

    fn which(&self, id: ConnId, who: Who) -> Option<usize> {
        let l = who.owner as usize;
        (self.loops.get(l)?.conn == Some(id)).then_some(l)
    }
}

impl Scenario for Urlopen {
    fn start(&mut self, io: &mut Io) {
        Live::add(&io.live.active, self.loops.len() as u64);
        for l in 0..self.loops.len() {
            self.open(io, l);
        }
    }

    fn on_connected(&mut self, io: &mut Io, id: ConnId, who: Who) {
        match self.which(id, who) {
            Some(l) => self.send(io, l, id),
            None => io.close(id),
        }
    }

    fn on_head(&mut self, io: &mut Io, id: ConnId, who: Who, head: &Head) {
        let Some(l) = self.which(id, who) else {
            return;
        };
        let lp = &mut self.loops[l];
        lp.ok_status = head.status == 200;
        if !lp.ok_status {
            // Counted now; the body is read to keep the connection usable.
            io.error(ErrorKind::from_status(head.status));
        }
        lp.sha = self.cfg.sha256.map(|_| Sha256::new());
    }

    fn on_body(&mut self, io: &mut Io, id: ConnId, who: Who, data: &[u8]) {
        let Some(l) = self.which(id, who) else {
            return;
        };
        let lp = &mut self.loops[l];
        if lp.ok_status {
            Live::add(&io.live.useful, data.len() as u64);
            if let Some(sha) = lp.sha.as_mut() {
                sha.update(data);
            }
        }
    }

    fn on_complete(&mut self, io: &mut Io, id: ConnId, who: Who, reusable: bool) {
        let Some(l) = self.which(id, who) else {
            return;
        };
        let now = io.now;
        let lp = &mut self.loops[l];
        if lp.ok_status {
            io.record_duration(Metric::Download, now.duration_since(lp.started));
            Live::add(&io.live.completed, 1);
            lp.retry.succeeded();
            if let (Some(sha), Some(want)) = (lp.sha.take(), self.cfg.sha256) {
                let got: [u8; 32] = sha.finalize().into();
                if got == want {
                    Live::add(&io.live.verified, 1);
                } else {
                    io.error(ErrorKind::HashMismatch);
                }
            }
        }
        if now >= io.deadline() {
            return;
        }
        if reusable && self.cfg.keep_alive {
            self.send(io, l, id);
        } else {
            if reusable {
                io.close(id);
            }
            self.open(io, l);
        }
    }

    fn on_closed(&mut self, io: &mut Io, id: ConnId, who: Who, error: Option<ErrorKind>) {
        let Some(l) = self.which(id, who) else {
            return;
        };
        let lp = &mut self.loops[l];
        lp.conn = None;
        lp.retry.schedule(io.now, error.is_some(), &BACKOFF);
        self.retries_pending += 1;
    }

    fn on_tick(&mut self, io: &mut Io) {
        if self.retries_pending == 0 {
            return;
        }
        let now = io.now;
        let mut pending = 0;
        for l in 0..self.loops.len() {
            if self.loops[l].retry.take_due(now, &mut pending) {
                self.open(io, l);
            }
        }
        self.retries_pending = pending;
    }

    fn finish(&mut self, io: &mut Io) {
        let in_flight = self.loops.iter().filter(|l| l.conn.is_some()).count();
        Live::add(&io.live.incomplete, in_flight as u64);
    }
}

/// `weir-load urlopen`: set up and run.
pub fn command(
    args: &crate::cli::UrlopenArgs,
) -> anyhow::Result<(crate::summary::Summary, std::path::PathBuf)> {
    use crate::runner;
    let url = crate::target::Url::parse(&args.url)?;
    let tls = crate::tls::from_common(&url, &args.common)?;
    let keep_alive = !args.no_keepalive;
    let request = crate::target::fixed_get(&url, args.credentials.as_deref(), keep_alive)?;
    let sha256 = args
        .sha256
        .as_deref()
        .map(crate::verify::parse_sha256)
        .transpose()?;
    let share = crate::processes::Share::from_common(&args.common)?;
    let sources = share.sources(&args.common)?;
    let loops = share.count_of(args.threads);
    let workers = runner::workers_for(args.common.workers, loops);
    let cfg = UrlopenConfig {
        request: request.into(),
        keep_alive,
        sha256,
    };
    let plan = runner::RunPlan {
        tls: tls.clone(),
        config: serde_json::json!({
            "threads": args.threads,
            "threads_this_process": loops,
            "keep_alive": keep_alive,
            "stall_timeout_s": args.common.stall_timeout.as_secs_f64(),
            "sha256": args.sha256,
            "source": args.common.source,
        }),
        verification: if sha256.is_some() { "sha256" } else { "off" }.to_string(),
        ..share.plan(
            "urlopen",
            url,
            args.duration,
            workers,
            &args.common,
            sources,
        )
    };
    runner::execute(plan, |w| {
        let n = loops / workers + usize::from(w < loops % workers);
        Urlopen::new(cfg.clone(), n)
    })
}
