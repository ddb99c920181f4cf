//! `forty`: U users, each a download manager fetching one file over K ranged connections.
//!
//! Per download a user: probes the size with a 1-byte range (`bytes=0-0`; a 200 means the server
//! ignores ranges and the user falls back to one connection for the rest of the run), splits the
//! file into K ranges ([`Plan`]), fetches them in parallel, gives an idle connection half of the
//! largest remaining range, and reopens a connection that broke or stalled to resume where it
//! stopped (after a short backoff). With `--sha256` every range is verified block by block as it
//! arrives ([`crate::verify`]). Users loop downloads until the run ends.
//!
//! Resuming uses only what the user holds: a range goes on from the bytes that arrived on it
//! ([`Plan`]), whatever the server says or forgot, so a server that dies and comes back on the
//! same address is resumed like any broken connection. `--retry-for` bounds how long failures
//! may go on with no progress before the download is given up ([`Streak`]); without it users
//! retry until the run ends. `--events` and `--gate` ([`crate::downloads`]) let a harness match
//! every finished download with a purchase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Who;
use crate::downloads::{DownloadLog, DownloadRecord, Gate};
use crate::errors::ErrorKind;
use crate::histograms::Metric;
use crate::http::Head;
use crate::manager::Plan;
use crate::retry::{Backoff, Retry, Streak};
use crate::stats::Live;
use crate::target::{write_get, Url};
use crate::verify::{BlockHasher, BlockList, BLOCK};
use crate::worker::{ConnId, Io, Scenario};

/// Smallest range worth its own connection (axel's 100 KiB).
pub const MIN_SPLIT: u64 = 100 * 1024;

/// Tag of the probe request (slot 0 is also the first range).
const PROBE_SLOT: u32 = 0;

/// Settings shared by every user.
#[derive(Clone)]
pub struct FortyConfig {
    pub url: Arc<Url>,
    pub host_header: Arc<str>,
    pub connections: usize,
    /// Verification list when `--sha256` was given and the reference fetch worked.
    pub blocks: Option<Arc<BlockList>>,
    /// `--retry-for`: give a download up after failing this long with no progress.
    pub retry_for: Option<Duration>,
    /// `--events`: one record per finished download.
    pub events: Option<Arc<DownloadLog>>,
    /// `--gate`: each download waits for its gate file.
    pub gate: Option<Gate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting to (re)start a download at this time.
    Waiting(Instant),
    /// The size probe is outstanding on slot 0.
    Probing,
    /// Ranges in flight.
    Downloading,
    /// Waiting for the gate file of the next download (`--gate`).
    Gated,
    /// Gave up (`--retry-for` ran out); idle until the run ends.
    Stopped,
}

#[derive(Default)]
struct Slot {
    conn: Option<ConnId>,
    /// Exclusive end of the range the outstanding request asked for.
    req_end: u64,
    /// Reopen (after a failure or a close), if the range is not done.
    retry: Retry,
    hasher: Option<BlockHasher>,
    /// The outstanding response is a probe whose byte is discarded.
    probe: bool,
}

struct User {
    /// Global index (events and gate files name users by it).
    global: usize,
    /// Number of the current (or next) download, from 0.
    number: u64,
    /// Failures since the last progress, for `--retry-for`.
    streak: Streak,
    auth: Arc<str>,
    state: State,
    started: Instant,
    plan: Option<Plan>,
    slots: Vec<Slot>,
    /// The server ignores Range: one connection, whole file.
    single: bool,
    corrupt: bool,
    probe_failures: u32,
}

/// The forty scenario for one worker's share of users.
pub struct Forty {
    cfg: FortyConfig,
    users: Vec<User>,
    retries_pending: usize,
    /// Users whose download was in flight when the run ended.
    pub incomplete: u64,
}

/// Reconnecting after a failure: 100 ms, doubling, at most 1.6 s.
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(50),
    doublings: 5,
    cap: Duration::from_secs(2),
};

impl Forty {
    /// Users get credentials round robin from `auths` (by their global index `first + i`).
    pub fn new(cfg: FortyConfig, user_indices: &[usize], auths: &[Arc<str>]) -> Forty {
        let now = Instant::now();
        let users = user_indices
            .iter()
            .map(|&g| User {
                global: g,
                number: 0,
                streak: Streak::default(),
                auth: if auths.is_empty() {
                    Arc::from("")
                } else {
                    auths[g % auths.len()].clone()
                },
                state: State::Waiting(now),
                started: now,
                plan: None,
                slots: Vec::new(),
                single: false,
                corrupt: false,
                probe_failures: 0,
            })
            .collect();
        Forty {
            cfg,
            users,
            retries_pending: 0,
            incomplete: 0,
        }
    }

    /// Close every connection of user `u` (and `also`, a connection it no longer tracks).
    fn close_all(&mut self, io: &mut Io, u: usize, also: Option<ConnId>) {
        for s in self.users[u].slots.iter_mut() {
            if let Some(c) = s.conn.take() {
                if Some(c) != also {
                    io.close(c);
                }
            }
        }
        if let Some(c) = also {
            if io.is_open(c) {
                io.close(c);
            }
        }
    }

    fn begin_download(&mut self, io: &mut Io, u: usize, reuse: Option<ConnId>) {
        let user = &mut self.users[u];
        if let Some(gate) = &self.cfg.gate {
            if !gate.is_open(user.global, user.number) {
                user.state = State::Gated;
                self.close_all(io, u, reuse);
                self.retries_pending += 1;
                return;
            }
        }
        user.state = State::Probing;
        user.started = io.now;
        user.plan = None;
        user.corrupt = false;
        for s in user.slots.iter_mut() {
            if let Some(c) = s.conn.take() {
                if Some(c) != reuse {
                    io.close(c);
                }
            }
            *s = Slot::default();
        }
        if user.slots.is_empty() {
            user.slots.resize_with(1, Slot::default);
        }
        let slot = &mut user.slots[PROBE_SLOT as usize];
        slot.probe = true;
        match reuse.filter(|c| io.is_open(*c)) {
            Some(c) => {
                slot.conn = Some(c);
                io.set_who(
                    c,
                    Who {
                        owner: u as u32,
                        tag: PROBE_SLOT,
                    },
                );
                self.send_probe(io, u, c);
            }
            None => {
                let id = io.open(Who {
                    owner: u as u32,
                    tag: PROBE_SLOT,
                });
                self.users[u].slots[PROBE_SLOT as usize].conn = Some(id);
            }
        }
    }

    fn send_probe(&mut self, io: &mut Io, u: usize, conn: ConnId) {
        let user = &mut self.users[u];
        let range = if user.single {
            None
        } else {
            Some((0, Some(0)))
        };
        user.slots[PROBE_SLOT as usize].probe = true;
        let (url, host, auth) = (&self.cfg.url, &self.cfg.host_header, &user.auth);
        io.send(conn, true, |b| write_get(b, url, host, auth, range, true));
    }

    fn send_range(&mut self, io: &mut Io, u: usize, s: usize, conn: ConnId) {
        let user = &mut self.users[u];
        let Some(plan) = user.plan.as_mut() else {
            return;
        };
        if user.single && plan.range(s).pos > 0 {
            // No ranges: a resumed download starts over.
            plan.restart(s);
            if self.cfg.blocks.is_some() {
                user.slots[s].hasher = Some(BlockHasher::starting_at(0));
            }
        }
        let r = plan.range(s);
        let slot = &mut user.slots[s];
        slot.req_end = r.end;
        slot.probe = false;
        let range = if user.single {
            None
        } else {
            Some((r.pos, Some(r.end - 1)))
        };
        let (url, host, auth) = (&self.cfg.url, &self.cfg.host_header, &user.auth);
        io.send(conn, true, |b| write_get(b, url, host, auth, range, true));
    }

    /// Open a connection for slot `s` (the request goes out once connected).
    fn open_slot(&mut self, io: &mut Io, u: usize, s: usize) {
        let id = io.open(Who {
            owner: u as u32,
            tag: s as u32,
        });
        self.users[u].slots[s].conn = Some(id);
    }

    /// The size is known: plan the ranges and start every slot.
    fn start_ranges(&mut self, io: &mut Io, u: usize, size: u64, probe_conn: Option<ConnId>) {
        let k = if self.users[u].single {
            1
        } else {
            self.cfg.connections
        };
        let plan = Plan::new(size, k, BLOCK, MIN_SPLIT);
        let user = &mut self.users[u];
        user.slots.resize_with(plan.slots().max(1), Slot::default);
        for s in 0..plan.slots() {
            user.slots[s].hasher = self
                .cfg
                .blocks
                .as_ref()
                .map(|_| BlockHasher::starting_at(plan.range(s).pos));
        }
        let n = plan.slots();
        user.plan = Some(plan);
        user.state = State::Downloading;
        for s in 0..n {
            match (s, probe_conn) {
                (0, Some(c)) if io.is_open(c) => {
                    self.users[u].slots[0].conn = Some(c);
                    self.send_range(io, u, 0, c);
                }
                _ => self.open_slot(io, u, s),
            }
        }
    }

    /// Slot `s` has nothing left: finish the download or take over half of another range.
    fn slot_done(&mut self, io: &mut Io, u: usize, s: usize, conn: Option<ConnId>) {
        let user = &mut self.users[u];
        let Some(plan) = user.plan.as_mut() else {
            return;
        };
        if plan.is_complete() {
            self.finish_download(io, u, conn);
            return;
        }
        match plan.steal(s) {
            Some(r) => {
                user.slots[s].hasher = self
                    .cfg
                    .blocks
                    .as_ref()
                    .map(|_| BlockHasher::starting_at(r.pos));
                user.slots[s].retry.succeeded();
                match conn {
                    Some(c) => {
                        user.slots[s].conn = Some(c);
                        self.send_range(io, u, s, c);
                    }
                    None => self.open_slot(io, u, s),
                }
            }
            None => {
                user.slots[s].conn = None;
                if let Some(c) = conn {
                    io.close(c);
                }
            }
        }
    }

    fn finish_download(&mut self, io: &mut Io, u: usize, conn: Option<ConnId>) {
        let now = io.now;
        let user = &mut self.users[u];
        let size = user.plan.as_ref().map_or(0, Plan::size);
        let took = now.duration_since(user.started);
        io.record_duration(Metric::Download, took);
        let us = took.as_micros().max(1) as u64;
        io.record(
            Metric::Goodput,
            (size as u128 * 1_000_000 / us as u128) as u64,
        );
        Live::add(&io.live.completed, 1);
        let mut verified = None;
        if let Some(list) = &self.cfg.blocks {
            let ok = !(user.corrupt || !list.trusted || list.size != size);
            if ok {
                Live::add(&io.live.verified, 1);
            } else {
                io.error(ErrorKind::HashMismatch);
            }
            verified = Some(ok);
        }
        if let Some(log) = &self.cfg.events {
            log.record(&DownloadRecord {
                user: user.global,
                download: user.number,
                bytes: size,
                verified,
                took_ms: took.as_millis() as u64,
            });
        }
        user.number += 1;
        // The next download's budget starts with its own first failure.
        user.streak.progressed();
        if now >= io.deadline() {
            return;
        }
        self.begin_download(io, u, conn);
    }

    fn slot_of(&self, who: Who, id: ConnId) -> Option<(usize, usize)> {
        let (u, s) = (who.owner as usize, who.tag as usize);
        let slot = self.users.get(u)?.slots.get(s)?;
        (slot.conn == Some(id)).then_some((u, s))
    }

    /// A request on slot `s` failed: drop the connection and retry after a backoff.
    fn retry_later(&mut self, io: &mut Io, u: usize, s: usize, kind: Option<ErrorKind>) {
        let now = io.now;
        let user = &mut self.users[u];
        if let Some(c) = user.slots[s].conn.take() {
            io.close(c);
        }
        if let Some(k) = kind {
            io.error(k);
        }
        self.resume_later(io, now, u, s, kind.is_some());
    }

    /// Slot `s` of user `u` lost its connection before its work was done: restart the probe, or
    /// reopen the slot, after a back-off if it `failed`; or give the download up if failures
    /// have outlasted `--retry-for`.
    fn resume_later(&mut self, io: &mut Io, now: Instant, u: usize, s: usize, failed: bool) {
        let user = &mut self.users[u];
        if failed {
            user.streak.failed(now);
            if user.streak.exhausted(now, self.cfg.retry_for) {
                io.error(ErrorKind::GaveUp);
                user.state = State::Stopped;
                self.close_all(io, u, None);
                return;
            }
        }
        if user.state == State::Probing {
            user.probe_failures += 1;
            user.state = State::Waiting(now + BACKOFF.after(user.probe_failures));
        } else {
            user.slots[s].retry.schedule(now, failed, &BACKOFF);
        }
        self.retries_pending += 1;
    }
}

impl Scenario for Forty {
    fn start(&mut self, io: &mut Io) {
        Live::add(&io.live.active, self.users.len() as u64);
        for u in 0..self.users.len() {
            self.begin_download(io, u, None);
        }
    }

    fn on_connected(&mut self, io: &mut Io, id: ConnId, who: Who) {
        let Some((u, s)) = self.slot_of(who, id) else {
            io.close(id);
            return;
        };
        if self.users[u].state == State::Probing {
            self.send_probe(io, u, id);
        } else {
            self.send_range(io, u, s, id);
        }
    }

    fn on_head(&mut self, io: &mut Io, id: ConnId, who: Who, head: &Head) {
        let Some((u, s)) = self.slot_of(who, id) else {
            io.close(id);
            return;
        };
        let user = &mut self.users[u];
        if user.state == State::Probing {
            match head.status {
                206 => match head.content_range {
                    Some(cr) if cr.range == Some((0, 0)) && cr.total.is_some() => {
                        user.probe_failures = 0;
                        user.streak.progressed();
                        // The size is taken when the probe completes (on_complete).
                        user.slots[s].req_end = cr.total.unwrap_or(0);
                    }
                    _ => self.retry_later(io, u, s, Some(ErrorKind::RangeMismatch)),
                },
                200 => {
                    let Some(size) = head.content_length else {
                        self.retry_later(io, u, s, Some(ErrorKind::BadResponse));
                        return;
                    };
                    // The server ignores Range: this response is the whole file on one
                    // connection, and so is every later download of this user.
                    if !user.single && size > 0 {
                        io.error(ErrorKind::RangeIgnored);
                    }
                    user.single = true;
                    user.probe_failures = 0;
                    self.start_ranges_on_body(io, u, size, id);
                }
                status => self.retry_later(io, u, s, Some(ErrorKind::from_status(status))),
            }
            return;
        }
        let Some(plan) = user.plan.as_ref() else {
            return;
        };
        let r = plan.range(s);
        let slot = &user.slots[s];
        match head.status {
            206 if !user.single => {
                let expect = Some((r.pos, slot.req_end - 1));
                let ok = head.content_range.is_some_and(|cr| {
                    cr.range == expect && cr.total.is_none_or(|t| t == plan.size())
                }) && head
                    .content_length
                    .is_none_or(|n| n == slot.req_end - r.pos);
                if ok {
                    user.slots[s].retry.succeeded();
                } else {
                    self.retry_later(io, u, s, Some(ErrorKind::RangeMismatch));
                }
            }
            200 if user.single => {
                if head.content_length != Some(plan.size()) {
                    self.retry_later(io, u, s, Some(ErrorKind::RangeMismatch));
                } else {
                    user.slots[s].retry.succeeded();
                }
            }
            200 => {
                // Ranges worked for the probe but not now: fall back to one connection.
                io.error(ErrorKind::RangeIgnored);
                user.single = true;
                let now = io.now;
                user.state = State::Waiting(now);
                for slot in user.slots.iter_mut() {
                    if let Some(c) = slot.conn.take() {
                        io.close(c);
                    }
                }
                self.retries_pending += 1;
            }
            status => self.retry_later(io, u, s, Some(ErrorKind::from_status(status))),
        }
    }

    fn on_body(&mut self, io: &mut Io, id: ConnId, who: Who, data: &[u8]) {
        let Some((u, s)) = self.slot_of(who, id) else {
            return;
        };
        let user = &mut self.users[u];
        if user.slots[s].probe {
            return;
        }
        let Some(plan) = user.plan.as_mut() else {
            return;
        };
        let pos = plan.range(s).pos;
        let n = plan.advance(s, data.len() as u64) as usize;
        if let (Some(list), Some(h)) = (&self.cfg.blocks, user.slots[s].hasher.as_mut()) {
            debug_assert_eq!(h.position(), pos);
            if !h.feed(list, &data[..n]) {
                user.corrupt = true;
            }
        }
        Live::add(&io.live.useful, n as u64);
        if n > 0 {
            user.streak.progressed();
        }
        if plan.range(s).is_done() && user.slots[s].req_end > plan.range(s).end {
            // A re-split moved this range's end: the rest of the response belongs to another
            // connection. Close (as download managers do) and move on.
            user.slots[s].conn = None;
            io.close(id);
            self.slot_done(io, u, s, None);
        }
    }

    fn on_complete(&mut self, io: &mut Io, id: ConnId, who: Who, reusable: bool) {
        let Some((u, s)) = self.slot_of(who, id) else {
            if reusable {
                io.close(id);
            }
            return;
        };
        let conn = reusable.then_some(id);
        let user = &mut self.users[u];
        if user.state == State::Probing {
            let size = user.slots[s].req_end;
            user.slots[s].probe = false;
            if !reusable {
                user.slots[s].conn = None;
            }
            self.start_ranges(io, u, size, conn);
            return;
        }
        if !reusable {
            user.slots[s].conn = None;
        }
        let done = user.plan.as_ref().is_some_and(|p| p.range(s).is_done());
        if done {
            self.slot_done(io, u, s, conn);
        } else {
            // The response ended before the range did (a shorter Content-Length was caught at
            // the head; this is a server that closed politely). Resume.
            self.retry_later(io, u, s, Some(ErrorKind::BodyShort));
        }
    }

    fn on_closed(&mut self, io: &mut Io, id: ConnId, who: Who, error: Option<ErrorKind>) {
        let Some((u, s)) = self.slot_of(who, id) else {
            return;
        };
        self.users[u].slots[s].conn = None;
        let needs_more = match self.users[u].state {
            State::Probing => true,
            State::Downloading => self.users[u]
                .plan
                .as_ref()
                .is_some_and(|p| !p.range(s).is_done()),
            State::Waiting(_) | State::Gated | State::Stopped => false,
        };
        if needs_more {
            // Already counted by the worker; schedule the resume.
            let now = io.now;
            self.resume_later(io, now, u, s, error.is_some());
        }
    }

    fn on_tick(&mut self, io: &mut Io) {
        if self.retries_pending == 0 {
            return;
        }
        let now = io.now;
        let mut pending = 0;
        for u in 0..self.users.len() {
            match self.users[u].state {
                State::Waiting(at) => {
                    if at <= now {
                        self.begin_download(io, u, None);
                    } else {
                        pending += 1;
                    }
                }
                State::Downloading => {
                    for s in 0..self.users[u].slots.len() {
                        let slot = &mut self.users[u].slots[s];
                        if slot.conn.is_some() {
                            // Connected again: a scheduled reopen waits for that to end.
                            pending += usize::from(slot.retry.is_scheduled());
                            continue;
                        }
                        if !slot.retry.take_due(now, &mut pending) {
                            continue;
                        }
                        let done = self.users[u]
                            .plan
                            .as_ref()
                            .is_none_or(|p| p.range(s).is_done());
                        if done {
                            // A re-split finished this range meanwhile.
                            self.slot_done(io, u, s, None);
                        } else {
                            self.open_slot(io, u, s);
                        }
                    }
                }
                State::Gated => {
                    let user = &self.users[u];
                    let open = self
                        .cfg
                        .gate
                        .as_ref()
                        .is_none_or(|g| g.is_open(user.global, user.number));
                    if open {
                        self.begin_download(io, u, None);
                    }
                }
                State::Probing | State::Stopped => {}
            }
        }
        // Users waiting for a gate (including those that reached one during this tick) keep
        // the tick looking.
        pending += self
            .users
            .iter()
            .filter(|u| u.state == State::Gated)
            .count();
        self.retries_pending = pending;
    }

    fn finish(&mut self, io: &mut Io) {
        self.incomplete = self
            .users
            .iter()
            .filter(|u| matches!(u.state, State::Probing | State::Downloading))
            .count() as u64;
        Live::add(&io.live.incomplete, self.incomplete);
    }
}

impl Forty {
    /// The probe was answered with the whole file (200): that response is slot 0's download.
    fn start_ranges_on_body(&mut self, _io: &mut Io, u: usize, size: u64, id: ConnId) {
        let plan = Plan::new(size, 1, BLOCK, MIN_SPLIT);
        let user = &mut self.users[u];
        user.slots.truncate(1);
        user.slots[0] = Slot {
            conn: Some(id),
            req_end: size,
            hasher: self
                .cfg
                .blocks
                .as_ref()
                .map(|_| BlockHasher::starting_at(0)),
            ..Slot::default()
        };
        user.plan = Some(plan);
        user.state = State::Downloading;
    }
}

/// `weir-load forty`: set up (credentials, sources, reference fetch) and run.
pub fn command(
    args: &crate::cli::FortyArgs,
) -> anyhow::Result<(crate::summary::Summary, std::path::PathBuf)> {
    use crate::runner;
    let url = Url::parse(&args.url)?;
    let tls = crate::tls::from_common(&url, &args.common)?;
    let auths: Vec<Arc<str>> = crate::target::load_credentials(
        args.credentials.as_deref(),
        args.credentials_file.as_deref(),
    )?
    .into_iter()
    .map(Arc::from)
    .collect();
    let share = crate::processes::Share::from_common(&args.common)?;
    let sources = share.sources(&args.common)?;
    let users: Vec<usize> = (0..args.users).filter(|g| share.owns(*g)).collect();
    let workers = runner::workers_for(args.common.workers, users.len());
    let started = Instant::now();
    let (blocks, verification, reference_s) = match (&args.sha256, &args.reference_file) {
        (None, _) => (None, "off".to_string(), None),
        (Some(hex), Some(path)) => {
            // The block list from a local copy: no reference GET (which would be a download of
            // its own, one a harness counting completions cannot match with a purchase).
            let expected = crate::verify::parse_sha256(hex)?;
            let t = Instant::now();
            let file = std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("opening --reference-file {}: {e}", path.display()))?;
            let list = BlockList::from_reader(std::io::BufReader::new(file), &expected)?;
            if !list.trusted {
                anyhow::bail!(
                    "--reference-file {} does not match --sha256",
                    path.display()
                );
            }
            let took = t.elapsed().as_secs_f64();
            (Some(Arc::new(list)), "sha256".to_string(), Some(took))
        }
        (Some(hex), None) => {
            let expected = crate::verify::parse_sha256(hex)?;
            let addrs = runner::resolve(&url);
            let auth = auths.first().map_or("", |a| a.as_ref());
            // Setup, not measured: bounded on its own (a minute, or the run's length if longer).
            let deadline = started + args.duration.max(Duration::from_secs(60));
            match addrs.first().map(|a| {
                crate::verify::reference_fetch(
                    crate::verify::Peer {
                        addr: *a,
                        source: sources.addrs().first().copied(),
                        tls: tls.as_deref(),
                    },
                    &url,
                    auth,
                    &expected,
                    args.common.stall_timeout,
                    deadline,
                )
            }) {
                Some(Ok(r)) => {
                    if !r.list.trusted {
                        eprintln!(
                            "weir-load: the reference GET of {url} does not match --sha256: \
                             every download will count as a hash mismatch"
                        );
                    }
                    let took = r.took.as_secs_f64();
                    (Some(Arc::new(r.list)), "sha256".to_string(), Some(took))
                }
                Some(Err(e)) => {
                    eprintln!("weir-load: reference GET for --sha256 failed: {e:#}; downloads are not verified");
                    (None, "unavailable".to_string(), None)
                }
                None => (None, "unavailable".to_string(), None),
            }
        }
    };
    let cfg = FortyConfig {
        url: Arc::new(url.clone()),
        host_header: Arc::from(url.host_header()),
        connections: args.connections.max(1),
        blocks,
        retry_for: args.retry_for,
        events: match &args.events {
            Some(p) => Some(Arc::new(DownloadLog::open(p).map_err(|e| {
                anyhow::anyhow!("opening --events {}: {e}", p.display())
            })?)),
            None => None,
        },
        gate: args.gate.as_deref().map(Gate::new),
    };
    let plan = runner::RunPlan {
        tls: tls.clone(),
        config: serde_json::json!({
            "users": args.users,
            "users_this_process": users.len(),
            "connections": args.connections,
            "stall_timeout_s": args.common.stall_timeout.as_secs_f64(),
            "sha256": args.sha256,
            "reference_fetch_s": reference_s,
            "credentials": auths.len(),
            "source": args.common.source,
            "retry_for_s": args.retry_for.map(|d| d.as_secs_f64()),
            "events": args.events,
            "gate": args.gate,
        }),
        verification,
        ..share.plan("forty", url, args.duration, workers, &args.common, sources)
    };
    runner::execute(plan, |w| {
        let mine: Vec<usize> = users
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % workers == w)
            .map(|(_, g)| g)
            .collect();
        Forty::new(cfg.clone(), &mine, &auths)
    })
}
