//! `rate`: the open model. Arrivals come as a Poisson process (exponential inter-arrival times)
//! whose rate ramps linearly from 0 to `--rate` over `--ramp` and then holds; each arrival fetches
//! the URL in full. At most `--max-users` connections exist at once; an arrival that finds them all
//! busy waits, and its latency still counts from its *intended* start (the arrival time), which is
//! the coordinated-omission correction wrk2 and oha's `--latency-correction` make. The uncorrected
//! latency (from the moment the request really went out) is recorded beside it.
//!
//! The ramp is drawn by thinning: candidates at the plateau rate, each kept with probability
//! rate(t)/rate, which yields exactly the time-varying Poisson process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::conn::Who;
use crate::errors::ErrorKind;
use crate::histograms::Metric;
use crate::http::Head;
use crate::stats::Live;
use crate::worker::{ConnId, Io, Scenario};

/// Settings of one worker's share of the arrivals.
#[derive(Clone)]
pub struct RateConfig {
    pub request: Arc<[u8]>,
    pub keep_alive: bool,
    /// Plateau arrivals per second for this worker.
    pub rate: f64,
    pub ramp: Duration,
    /// Most connections this worker holds.
    pub max_users: usize,
    pub seed: u64,
}

#[derive(Clone, Copy)]
struct Flight {
    conn: ConnId,
    intended: Instant,
    started: Instant,
    ok: bool,
    /// Connected and carrying an arrival (false while connecting with no request yet).
    busy: bool,
}

/// The open-model scenario for one worker.
pub struct Rate {
    cfg: RateConfig,
    rng: StdRng,
    next_arrival: Option<Instant>,
    queue: VecDeque<Instant>,
    idle: Vec<ConnId>,
    flights: Vec<Option<Flight>>,
    free: Vec<usize>,
    conns: usize,
}

/// Exponential inter-arrival time for `rate` per second.
pub fn exp_interval(rng: &mut impl Rng, rate: f64) -> Duration {
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    Duration::from_secs_f64(-u.ln() / rate)
}

/// The arrival rate at `t` since the start: a linear ramp, then the plateau.
pub fn rate_at(rate: f64, ramp: Duration, t: Duration) -> f64 {
    if ramp.is_zero() || t >= ramp {
        rate
    } else {
        rate * t.as_secs_f64() / ramp.as_secs_f64()
    }
}

impl Rate {
    /// One worker's arrivals.
    pub fn new(cfg: RateConfig) -> Rate {
        Rate {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            next_arrival: None,
            queue: VecDeque::new(),
            idle: Vec::new(),
            flights: Vec::new(),
            free: Vec::new(),
            conns: 0,
        }
    }

    fn new_flight(&mut self, f: Flight) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.flights[i] = Some(f);
                i
            }
            None => {
                self.flights.push(Some(f));
                self.flights.len() - 1
            }
        }
    }

    fn flight(&self, id: ConnId, who: Who) -> Option<usize> {
        let i = who.owner as usize;
        match self.flights.get(i)? {
            Some(f) if f.conn == id => Some(i),
            _ => None,
        }
    }

    /// Start an arrival that was meant to start at `intended`.
    fn dispatch(&mut self, io: &mut Io, intended: Instant) {
        if let Some(c) = self.idle.pop() {
            self.start_on(io, c, intended);
        } else if self.conns < self.cfg.max_users {
            self.conns += 1;
            let i = self.new_flight(Flight {
                conn: ConnId::NONE,
                intended,
                started: intended,
                ok: false,
                busy: false,
            });
            let id = io.open(Who {
                owner: i as u32,
                tag: 0,
            });
            if let Some(f) = self.flights[i].as_mut() {
                f.conn = id;
            }
        } else {
            Live::add(&io.live.queued, 1);
            self.queue.push_back(intended);
        }
    }

    fn start_on(&mut self, io: &mut Io, c: ConnId, intended: Instant) {
        let i = self.new_flight(Flight {
            conn: c,
            intended,
            started: io.now,
            ok: false,
            busy: true,
        });
        io.set_who(
            c,
            Who {
                owner: i as u32,
                tag: 0,
            },
        );
        self.send(io, i);
    }

    fn send(&mut self, io: &mut Io, i: usize) {
        let Some(f) = self.flights[i].as_mut() else {
            return;
        };
        f.started = io.now;
        f.busy = true;
        Live::add(&io.live.active, 1);
        let req = &self.cfg.request;
        io.send(f.conn, self.cfg.keep_alive, |b| b.extend_from_slice(req));
    }

    fn end_flight(&mut self, io: &mut Io, i: usize) {
        if let Some(f) = self.flights[i].take() {
            if f.busy {
                io.live
                    .active
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.free.push(i);
        }
    }

    fn arrivals(&mut self, io: &mut Io) {
        let now = Instant::now();
        io.now = now;
        let deadline = io.deadline();
        let start = io.start();
        let rate = self.cfg.rate;
        if rate <= 0.0 {
            self.next_arrival = None;
            return;
        }
        let mut next = match self.next_arrival {
            Some(t) => t,
            None => start + exp_interval(&mut self.rng, rate),
        };
        while next <= now && next < deadline {
            let r = rate_at(rate, self.cfg.ramp, next.duration_since(start));
            if self.rng.gen_range(0.0..1.0) * rate < r {
                self.dispatch(io, next);
            }
            next += exp_interval(&mut self.rng, rate);
        }
        self.next_arrival = (next < deadline).then_some(next);
    }
}

impl Scenario for Rate {
    fn start(&mut self, io: &mut Io) {
        self.arrivals(io);
    }

    fn on_connected(&mut self, io: &mut Io, id: ConnId, who: Who) {
        match self.flight(id, who) {
            Some(i) => self.send(io, i),
            None => io.close(id),
        }
    }

    fn on_head(&mut self, io: &mut Io, id: ConnId, who: Who, head: &Head) {
        if let Some(i) = self.flight(id, who) {
            let ok = head.status == 200;
            if !ok {
                io.error(ErrorKind::from_status(head.status));
            }
            if let Some(f) = self.flights[i].as_mut() {
                f.ok = ok;
            }
        }
    }

    fn on_body(&mut self, io: &mut Io, id: ConnId, who: Who, data: &[u8]) {
        if let Some(i) = self.flight(id, who) {
            if self.flights[i].is_some_and(|f| f.ok) {
                Live::add(&io.live.useful, data.len() as u64);
            }
        }
    }

    fn on_complete(&mut self, io: &mut Io, id: ConnId, who: Who, reusable: bool) {
        let Some(i) = self.flight(id, who) else {
            return;
        };
        let now = io.now;
        if let Some(f) = self.flights[i] {
            if f.ok {
                io.record_duration(Metric::Latency, now.duration_since(f.intended));
                io.record_duration(Metric::LatencyUncorrected, now.duration_since(f.started));
                io.record_duration(Metric::Download, now.duration_since(f.started));
                Live::add(&io.live.completed, 1);
            }
        }
        self.end_flight(io, i);
        if !reusable {
            self.conns -= 1;
        }
        match self.queue.pop_front() {
            Some(intended) if reusable => self.start_on(io, id, intended),
            Some(intended) => self.dispatch(io, intended),
            None if reusable && self.cfg.keep_alive => self.idle.push(id),
            None => {
                if reusable {
                    io.close(id);
                    self.conns -= 1;
                }
            }
        }
    }

    fn on_closed(&mut self, io: &mut Io, id: ConnId, who: Who, _error: Option<ErrorKind>) {
        if let Some(pos) = self.idle.iter().position(|c| *c == id) {
            self.idle.swap_remove(pos);
            self.conns -= 1;
            return;
        }
        let Some(i) = self.flight(id, who) else {
            return;
        };
        // The arrival failed (counted by kind); its connection is gone.
        self.end_flight(io, i);
        self.conns -= 1;
        if let Some(intended) = self.queue.pop_front() {
            self.dispatch(io, intended);
        }
    }

    fn on_tick(&mut self, io: &mut Io) {
        self.arrivals(io);
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.next_arrival
    }

    fn finish(&mut self, io: &mut Io) {
        let in_flight = self.flights.iter().flatten().count() + self.queue.len();
        Live::add(&io.live.incomplete, in_flight as u64);
    }
}

/// `weir-load rate`: set up and run.
pub fn command(
    args: &crate::cli::RateArgs,
) -> anyhow::Result<(crate::summary::Summary, std::path::PathBuf)> {
    use crate::runner;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of arrivals per second"
    );
    anyhow::ensure!(args.max_users >= 1, "--max-users must be at least 1");
    let url = crate::target::Url::parse(&args.url)?;
    let tls = crate::tls::from_common(&url, &args.common)?;
    let keep_alive = !args.no_keepalive;
    let request = crate::target::fixed_get(&url, args.credentials.as_deref(), keep_alive)?;
    let share = crate::processes::Share::from_common(&args.common)?;
    let sources = share.sources(&args.common)?;
    let workers = runner::workers_for(args.common.workers, args.max_users);
    let parts = (workers * share.count) as f64;
    let seed = args.seed.unwrap_or_else(rand::random);
    let cfg = RateConfig {
        request: request.into(),
        keep_alive,
        rate: args.rate / parts,
        ramp: args.ramp,
        max_users: (args.max_users / (workers * share.count)).max(1),
        seed,
    };
    let plan = runner::RunPlan {
        tls: tls.clone(),
        config: serde_json::json!({
            "rate": args.rate,
            "ramp_s": args.ramp.as_secs_f64(),
            "max_users": args.max_users,
            "keep_alive": keep_alive,
            "seed": seed,
            "stall_timeout_s": args.common.stall_timeout.as_secs_f64(),
            "source": args.common.source,
        }),
        ..share.plan("rate", url, args.duration, workers, &args.common, sources)
    };
    runner::execute(plan, |w| {
        let mut c = cfg.clone();
        c.seed = seed.wrapping_add((share.index * workers + w) as u64 * 0x9E37_79B9);
        Rate::new(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_mean_matches_rate() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| exp_interval(&mut rng, 200.0).as_secs_f64())
            .sum();
        let mean = total / n as f64;
        assert!((mean - 0.005).abs() < 0.0003, "mean {mean}");
    }

    #[test]
    fn ramp_then_plateau() {
        let r = Duration::from_secs(10);
        assert_eq!(rate_at(100.0, r, Duration::ZERO), 0.0);
        assert_eq!(rate_at(100.0, r, Duration::from_secs(5)), 50.0);
        assert_eq!(rate_at(100.0, r, Duration::from_secs(20)), 100.0);
        assert_eq!(rate_at(100.0, Duration::ZERO, Duration::ZERO), 100.0);
    }
}
