//! The event loop of one worker thread: a mio `Poll` (epoll), its connections, one reused read
//! buffer, and a [`Scenario`] that decides what each connection does next.
//!
//! Bytes are read into the worker's single scratch buffer and handed to the scenario as slices; no
//! body is copied or stored. Connection ids carry a generation so an event for a closed
//! connection is never delivered to the one that reused its slot. The loop ends by itself at the
//! run's deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::conn::{Conn, Phase, ReadOutcome, Who};
use crate::errors::ErrorKind;
use crate::histograms::{Histograms, Metric};
use crate::http::{parse_head, BodyDecoder, Head, HeadParse};
use crate::source::SourcePicker;
use crate::stats::Live;

/// Size of the per-worker read buffer.
pub const SCRATCH: usize = 256 * 1024;

/// Reads per readiness event before a connection yields to the others (it is revisited in the
/// same loop turn's "still readable" pass, so edge-triggered readiness is never lost).
pub const READS_PER_TURN: usize = 8;

/// Length of one `.hlog` interval.
/// Empty non-blocking polls a busy worker makes before it sleeps in `epoll_wait`. A worker that
/// is asleep when a response arrives makes the *server* pay for the wakeup (in a loopback test
/// that is a cross-CPU wakeup inside the server's send); polling a few more times while responses
/// keep coming avoids most of them. Measured against nginx with 100 keep-alive connections on
/// 4 KiB: about +4% requests/s; the cost is at most this many ~0.5 µs syscalls per idle moment.
pub const SPINS: u32 = 16;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A connection handle: slot index plus generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    idx: u32,
    gen: u32,
}

impl ConnId {
    /// An id that names no connection.
    pub const NONE: ConnId = ConnId {
        idx: u32::MAX,
        gen: 0,
    };

    fn token(self) -> Token {
        Token(((self.gen as usize) << 32) | self.idx as usize)
    }

    fn from_token(t: Token) -> ConnId {
        ConnId {
            idx: (t.0 & 0xffff_ffff) as u32,
            gen: (t.0 >> 32) as u32,
        }
    }
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// What a scenario decides, driven by connection events.
pub trait Scenario {
    /// Open the first connections.
    fn start(&mut self, io: &mut Io);
    /// A connection finished its handshake and has no request: send one.
    fn on_connected(&mut self, io: &mut Io, id: ConnId, who: Who);
    /// A response head arrived (the body, if any, follows through `on_body`).
    fn on_head(&mut self, io: &mut Io, id: ConnId, who: Who, head: &Head);
    /// Body bytes, in order. The scenario may close the connection from here.
    fn on_body(&mut self, io: &mut Io, id: ConnId, who: Who, data: &[u8]);
    /// The response is complete. When `reusable` the connection is idle and may carry another
    /// request; otherwise it is already closed.
    fn on_complete(&mut self, io: &mut Io, id: ConnId, who: Who, reusable: bool);
    /// The connection is gone without the scenario asking: `error` says why (counted already), or
    /// `None` when the server closed an idle keep-alive connection.
    fn on_closed(&mut self, io: &mut Io, id: ConnId, who: Who, error: Option<ErrorKind>);
    /// Called every few milliseconds: retries, arrivals, timers.
    fn on_tick(&mut self, io: &mut Io);
    /// The earliest time the scenario wants `on_tick` (sooner than the default tick).
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }
    /// The run is over: account for what is still in flight.
    fn finish(&mut self, io: &mut Io);
}

/// One interval's histograms from one worker, for the `.hlog` writer.
pub struct IntervalReport {
    pub index: u64,
    pub hists: Histograms,
}

/// Settings every worker shares.
#[derive(Clone)]
pub struct WorkerConfig {
    pub targets: Arc<[SocketAddr]>,
    pub stall_timeout: Duration,
    pub start: Instant,
    pub deadline: Instant,
    /// TLS client setup for `https://` targets.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// The I/O side a scenario drives: open, send, close, record.
pub struct Io {
    poll: Poll,
    slots: Vec<Slot>,
    free: Vec<u32>,
    closed: Vec<(ConnId, Who, Option<ErrorKind>)>,
    /// Connections that still had bytes to read when their turn ended.
    readable: Vec<ConnId>,
    /// Requests built during this event batch, written after it (see [`Io::flush_sends`]).
    to_send: Vec<ConnId>,
    dead_gen: u32,
    next_target: usize,
    sources: SourcePicker,
    cfg: WorkerConfig,
    /// The time of the current event batch (refreshed on every read).
    pub now: Instant,
    /// Whole-run histograms of this worker.
    pub hists: Histograms,
    /// Current-interval histograms of this worker.
    pub interval: Histograms,
    /// This worker's live counters.
    pub live: Arc<Live>,
}

impl Io {
    fn new(cfg: WorkerConfig, sources: SourcePicker, live: Arc<Live>) -> io::Result<Io> {
        Ok(Io {
            poll: Poll::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            readable: Vec::new(),
            to_send: Vec::new(),
            dead_gen: 0,
            next_target: 0,
            sources,
            now: Instant::now(),
            hists: Histograms::default(),
            interval: Histograms::default(),
            live,
            cfg,
        })
    }

    /// When the run ends.
    pub fn deadline(&self) -> Instant {
        self.cfg.deadline
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.cfg.start
    }

    /// Record a value in the run and interval histograms.
    pub fn record(&mut self, metric: Metric, value: u64) {
        // Into the interval only: it is added to the whole-run set when the interval ends, so a
        // value costs one histogram update, not two.
        self.interval.record(metric, value);
    }

    /// Record a duration (microseconds).
    pub fn record_duration(&mut self, metric: Metric, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.record(metric, us);
    }

    /// Count an error the scenario detected.
    pub fn error(&self, kind: ErrorKind) {
        self.live.errors.add(kind);
    }

    /// Open a connection for `who`. Failures are reported through `on_closed` with the id
    /// returned here, after the current callback returns.
    pub fn open(&mut self, who: Who) -> ConnId {
        let now = Instant::now();
        self.now = now;
        Live::add(&self.live.opened, 1);
        if self.cfg.targets.is_empty() {
            return self.dead(who, ErrorKind::Dns);
        }
        let target = self.cfg.targets[self.next_target % self.cfg.targets.len()];
        self.next_target = self.next_target.wrapping_add(1);
        let source = self.sources.next_addr();
        let mut conn = match Conn::connect(target, source, who, self.cfg.tls.as_deref(), now) {
            Ok(c) => c,
            Err(kind) => return self.dead(who, kind),
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        let id = ConnId { idx, gen: slot.gen };
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(idx);
            return self.dead(who, ErrorKind::from_connect_error(&e));
        }
        slot.conn = Some(conn);
        // `opened` was counted above; open/max_open track live sockets.
        self.live
            .opened
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.live.conn_opened();
        id
    }

    fn dead(&mut self, who: Who, kind: ErrorKind) -> ConnId {
        self.live.errors.add(kind);
        self.dead_gen = self.dead_gen.wrapping_add(1);
        let id = ConnId {
            idx: u32::MAX,
            gen: self.dead_gen,
        };
        self.closed.push((id, who, Some(kind)));
        id
    }

    /// Give an open connection to another owner or slot (a kept-alive connection moving on).
    pub fn set_who(&mut self, id: ConnId, who: Who) {
        if let Some(c) = self.conn_mut(id) {
            c.who = who;
        }
    }

    /// Is this connection still open?
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conn(id).is_some()
    }

    /// The connection's phase, if open.
    pub fn phase(&self, id: ConnId) -> Option<Phase> {
        self.conn(id).map(|c| c.phase)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        slot.conn.as_mut()
    }

    /// Send a request: `build` writes the request head into the (cleared, reused) buffer.
    /// `keep_alive` says whether the request asked to keep the connection open. If the
    /// connection is still connecting the request goes out when it connects.
    pub fn send(&mut self, id: ConnId, keep_alive: bool, build: impl FnOnce(&mut Vec<u8>)) {
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        debug_assert!(matches!(
            conn.phase,
            Phase::Idle | Phase::Connecting | Phase::Handshaking
        ));
        build(&mut conn.req);
        conn.sent = 0;
        conn.req_keep_alive = keep_alive;
        conn.first_byte = false;
        conn.last_body_read = None;
        conn.head.clear();
        conn.last_progress = now;
        if matches!(conn.phase, Phase::Connecting | Phase::Handshaking) {
            return;
        }
        conn.phase = Phase::Sending;
        Live::add(&self.live.requests, 1);
        self.to_send.push(id);
    }

    /// Write the requests queued during the batch of events just handled. Writing them together,
    /// after all the batch's reads, lets the server find several requests per wakeup instead of
    /// being woken once per request while this thread is still reading.
    fn flush_sends(&mut self) {
        // `try_write` queues nothing (failures go to `closed`), so one pass empties the queue;
        // its allocation is kept for the next batch.
        let mut batch = std::mem::take(&mut self.to_send);
        for &id in &batch {
            if self.conn_mut(id).is_some_and(|c| c.phase == Phase::Sending) {
                self.try_write(id);
            }
        }
        batch.clear();
        self.to_send = batch;
    }

    fn try_write(&mut self, id: ConnId) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(id.idx as usize) else {
            return;
        };
        let Some(conn) = slot.conn.as_mut().filter(|_| slot.gen == id.gen) else {
            return;
        };
        match conn.write_request() {
            Ok(true) => {
                conn.phase = Phase::Head;
                conn.sent_at = now;
                conn.last_progress = now;
                want_writable(&self.poll, conn, id, false);
            }
            Ok(false) => {
                conn.last_progress = now;
                want_writable(&self.poll, conn, id, true);
            }
            Err(kind) => self.fail(id, kind),
        }
    }

    /// Stop asking for writable events (connected, nothing waiting to be written).
    fn readable_only(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(id.idx as usize) else {
            return;
        };
        if let Some(conn) = slot.conn.as_mut().filter(|_| slot.gen == id.gen) {
            want_writable(&self.poll, conn, id, false);
        }
    }

    /// Close a connection the scenario is done with (no notification).
    pub fn close(&mut self, id: ConnId) {
        self.take(id);
    }

    fn take(&mut self, id: ConnId) -> Option<Conn> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let mut conn = slot.conn.take()?;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(id.idx);
        self.live.conn_closed();
        Some(conn)
    }

    /// Drop a connection because of `kind` (counted) and tell the scenario.
    pub fn fail(&mut self, id: ConnId, kind: ErrorKind) {
        if let Some(conn) = self.take(id) {
            self.live.errors.add(kind);
            self.closed.push((id, conn.who, Some(kind)));
        }
    }

    fn close_quietly(&mut self, id: ConnId) {
        if let Some(conn) = self.take(id) {
            self.closed.push((id, conn.who, None));
        }
    }

    /// Open connections of this worker.
    pub fn open_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Drop connections that made no progress for the stall timeout.
    fn stall_scan(&mut self) {
        let now = Instant::now();
        let timeout = self.cfg.stall_timeout;
        let mut stalled = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(c) = &slot.conn {
                if c.phase != Phase::Idle && now.duration_since(c.last_progress) >= timeout {
                    // A TLS handshake that stops moving is a stall like any other.
                    let kind = if c.phase == Phase::Connecting {
                        ErrorKind::ConnectTimeout
                    } else {
                        ErrorKind::Stall
                    };
                    stalled.push((
                        ConnId {
                            idx: i as u32,
                            gen: slot.gen,
                        },
                        kind,
                    ));
                }
            }
        }
        for (id, kind) in stalled {
            self.fail(id, kind);
        }
    }

    /// Close everything (end of run).
    fn close_all(&mut self) {
        for i in 0..self.slots.len() {
            let gen = self.slots[i].gen;
            self.take(ConnId { idx: i as u32, gen });
        }
    }
}

/// Asks for writable events as well while `want` (a request is part-written), readable ones
/// only otherwise; re-registers only on a change.
fn want_writable(poll: &Poll, conn: &mut Conn, id: ConnId, want: bool) {
    if conn.want_write == want {
        return;
    }
    conn.want_write = want;
    let interest = if want {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    let _ = poll
        .registry()
        .reregister(&mut conn.stream, id.token(), interest);
}

/// What a worker hands back when its run ends.
pub struct WorkerOutput<S> {
    pub hists: Histograms,
    /// When the loop stopped.
    pub ended: Instant,
    pub scenario: S,
}

/// Run `scenario` on this thread until the deadline.
pub fn run<S: Scenario>(
    cfg: WorkerConfig,
    sources: SourcePicker,
    live: Arc<Live>,
    mut scenario: S,
    intervals: Option<Sender<IntervalReport>>,
) -> io::Result<WorkerOutput<S>> {
    let start = cfg.start;
    let deadline = cfg.deadline;
    let tick = Duration::from_millis(10);
    let stall_every =
        (cfg.stall_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut io = Io::new(cfg, sources, live)?;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut next_tick = Instant::now();
    let mut next_stall = Instant::now() + stall_every;
    let mut interval_index = 0u64;
    let mut next_interval = start + INTERVAL;
    let mut spins = 0u32;

    io.now = Instant::now();
    scenario.start(&mut io);
    deliver_closed(&mut io, &mut scenario);
    loop {
        while !io.to_send.is_empty() {
            io.flush_sends();
            deliver_closed(&mut io, &mut scenario);
        }
        // The clock was read after the last batch; sending since then took microseconds.
        let now = io.now;
        if now >= deadline {
            break;
        }
        let mut wake = next_tick.min(deadline).min(next_interval);
        if let Some(w) = scenario.next_wakeup() {
            wake = wake.min(w);
        }
        let timeout = if io.readable.is_empty() && spins == 0 {
            wake.saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        match io.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // A non-blocking poll that found nothing took no time worth a clock read.
        if !(events.is_empty() && timeout.is_zero()) {
            io.now = Instant::now();
        }
        spins = if events.is_empty() {
            spins.saturating_sub(1)
        } else {
            SPINS
        };
        let again = std::mem::take(&mut io.readable);
        let had_again = !again.is_empty();
        for ev in events.iter() {
            let id = ConnId::from_token(ev.token());
            handle_event(&mut io, &mut scenario, &mut scratch, id, ev);
            deliver_closed(&mut io, &mut scenario);
        }
        if had_again {
            io.now = Instant::now();
        }
        for id in again {
            match io.conn_mut(id) {
                Some(c) => c.queued = false,
                None => continue,
            }
            read_ready(&mut io, &mut scenario, &mut scratch, id, true);
            deliver_closed(&mut io, &mut scenario);
        }
        if !events.is_empty() || had_again {
            io.now = Instant::now();
        }
        let now = io.now;
        if now >= next_stall {
            io.stall_scan();
            deliver_closed(&mut io, &mut scenario);
            next_stall = now + stall_every;
        }
        if now >= next_tick || scenario.next_wakeup().is_some_and(|w| w <= now) {
            scenario.on_tick(&mut io);
            deliver_closed(&mut io, &mut scenario);
            next_tick = now + tick;
        }
        if now >= next_interval {
            if let Some(tx) = &intervals {
                let _ = tx.send(IntervalReport {
                    index: interval_index,
                    hists: io.interval.clone(),
                });
            }
            io.hists.merge(&io.interval);
            io.interval.reset();
            interval_index += 1;
            next_interval += INTERVAL;
            while next_interval <= now {
                interval_index += 1;
                next_interval += INTERVAL;
            }
        }
    }
    let ended = Instant::now();
    io.now = ended;
    scenario.finish(&mut io);
    io.close_all();
    io.closed.clear();
    if let Some(tx) = &intervals {
        if !io.interval.is_empty() {
            let _ = tx.send(IntervalReport {
                index: interval_index,
                hists: io.interval.clone(),
            });
        }
    }
    io.hists.merge(&io.interval);
    Ok(WorkerOutput {
        ended,
        hists: io.hists,
        scenario,
    })
}

fn deliver_closed<S: Scenario>(io: &mut Io, scenario: &mut S) {
    // Callbacks may close more connections; loop until quiet.
    while !io.closed.is_empty() {
        let batch = std::mem::take(&mut io.closed);
        for (id, who, kind) in batch {
            scenario.on_closed(io, id, who, kind);
        }
    }
}

fn handle_event<S: Scenario>(
    io: &mut Io,
    scenario: &mut S,
    scratch: &mut [u8],
    id: ConnId,
    ev: &mio::event::Event,
) {
    let now = io.now;
    let Some(conn) = io.conn_mut(id) else {
        return;
    };
    match conn.phase {
        Phase::Connecting => match conn.finish_connect() {
            Ok(false) => {}
            Err(kind) => io.fail(id, kind),
            Ok(true) => {
                let connect_time = now.duration_since(conn.opened_at);
                conn.last_progress = now;
                conn.connected_at = now;
                let tls = conn.tls.is_some();
                io.record_duration(Metric::Connect, connect_time);
                if tls {
                    io.conn_mut(id).expect("still open").phase = Phase::Handshaking;
                    handshake(io, scenario, id);
                } else {
                    connected(io, scenario, id);
                }
            }
        },
        Phase::Handshaking => handshake(io, scenario, id),
        Phase::Sending => {
            if ev.is_writable() || ev.is_error() {
                io.try_write(id);
            }
        }
        Phase::Head | Phase::Body | Phase::Idle => {}
    }
    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
        let drain = ev.is_read_closed() || ev.is_error();
        read_ready(io, scenario, scratch, id, drain);
    }
}

/// Drive a TLS handshake; once it is done the connection is ready for its request.
fn handshake<S: Scenario>(io: &mut Io, scenario: &mut S, id: ConnId) {
    let now = io.now;
    let Some(conn) = io.conn_mut(id) else {
        return;
    };
    match conn.handshake() {
        Ok(false) => {}
        Err(kind) => io.fail(id, kind),
        Ok(true) => {
            let took = now.duration_since(conn.connected_at);
            conn.last_progress = now;
            Live::add(&io.live.tls_handshakes, 1);
            Live::add(
                &io.live.tls_handshake_us,
                took.as_micros().min(u64::MAX as u128) as u64,
            );
            connected(io, scenario, id);
        }
    }
}

/// The connection is ready (TCP connected, TLS handshake done): send the request waiting for
/// it, or ask the scenario for one.
fn connected<S: Scenario>(io: &mut Io, scenario: &mut S, id: ConnId) {
    let Some(conn) = io.conn_mut(id) else {
        return;
    };
    let who = conn.who;
    if !conn.req.is_empty() {
        conn.phase = Phase::Sending;
        Live::add(&io.live.requests, 1);
        io.try_write(id);
    } else {
        conn.phase = Phase::Idle;
        io.readable_only(id);
        scenario.on_connected(io, id, who);
    }
}

/// Read what the connection has. A read that returns less than the buffer means the receive
/// queue is empty: on Linux any byte arriving later raises a new edge, so the loop stops there
/// instead of spending a syscall on EAGAIN (one read per small response, as wrk does). When the
/// event also said the peer closed (`drain`), it reads on to see the EOF.
fn read_ready<S: Scenario>(
    io: &mut Io,
    scenario: &mut S,
    scratch: &mut [u8],
    id: ConnId,
    drain: bool,
) {
    for turn in 0.. {
        if turn == READS_PER_TURN {
            if let Some(conn) = io.conn_mut(id) {
                if !conn.queued {
                    conn.queued = true;
                    io.readable.push(id);
                }
            }
            return;
        }
        let Some(conn) = io.conn_mut(id) else {
            return;
        };
        if matches!(
            conn.phase,
            Phase::Connecting | Phase::Handshaking | Phase::Sending
        ) {
            return;
        }
        match conn.read(scratch) {
            Ok(ReadOutcome::Eof) => {
                on_eof(io, scenario, id);
                return;
            }
            Ok(ReadOutcome::Data { n, drained }) => {
                let eof_pending = conn.eof_pending();
                // The first read of an event is timed by the poll that reported it (the bytes
                // were there by then); a read after a full buffer is timed afresh, since copying
                // that buffer took a while.
                if turn > 0 {
                    io.now = Instant::now();
                }
                process(io, scenario, id, &scratch[..n]);
                if drained && !drain && !eof_pending {
                    return;
                }
            }
            Ok(ReadOutcome::WouldBlock) => return,
            Err(kind) => {
                io.fail(id, kind);
                return;
            }
        }
    }
}

fn on_eof<S: Scenario>(io: &mut Io, scenario: &mut S, id: ConnId) {
    let Some(conn) = io.conn_mut(id) else {
        return;
    };
    match conn.phase {
        Phase::Idle => io.close_quietly(id),
        Phase::Head => {
            let kind = if conn.head.is_empty() && !conn.first_byte {
                ErrorKind::ClosedBeforeResponse
            } else {
                ErrorKind::BadResponse
            };
            io.fail(id, kind);
        }
        Phase::Body if conn.body.until_close() => {
            let who = conn.who;
            io.take(id);
            scenario.on_complete(io, id, who, false);
        }
        _ => io.fail(id, ErrorKind::BodyShort),
    }
}

/// Feed `data` (just read) to the connection's response.
fn process<S: Scenario>(io: &mut Io, scenario: &mut S, id: ConnId, data: &[u8]) {
    let mut off = 0;
    let mut gap_recorded = false;
    while off < data.len() {
        let now = io.now;
        let Some(conn) = io.conn_mut(id) else {
            return;
        };
        conn.last_progress = now;
        let who = conn.who;
        match conn.phase {
            Phase::Head => {
                if !conn.first_byte {
                    conn.first_byte = true;
                    let ttfb = now.duration_since(conn.sent_at);
                    io.record_duration(Metric::Ttfb, ttfb);
                    continue;
                }
                let head: Head = if conn.head.is_empty() {
                    match parse_head(&data[off..]) {
                        HeadParse::Complete(h) => {
                            off += h.len;
                            h
                        }
                        HeadParse::Partial => {
                            conn.head.extend_from_slice(&data[off..]);
                            return;
                        }
                        HeadParse::Invalid => {
                            io.fail(id, ErrorKind::BadResponse);
                            return;
                        }
                    }
                } else {
                    let before = conn.head.len();
                    conn.head.extend_from_slice(&data[off..]);
                    match parse_head(&conn.head) {
                        HeadParse::Complete(h) => {
                            // Bytes of this read past the head are body: continue from there.
                            let used = h.len - before;
                            off += used;
                            conn.head.clear();
                            h
                        }
                        HeadParse::Partial => return,
                        HeadParse::Invalid => {
                            io.fail(id, ErrorKind::BadResponse);
                            return;
                        }
                    }
                };
                conn.body = BodyDecoder::for_head(&head);
                conn.keep_alive = head.keep_alive && conn.req_keep_alive;
                conn.phase = Phase::Body;
                conn.last_body_read = None;
                Live::add(&io.live.responses, 1);
                scenario.on_head(io, id, who, &head);
                if let Some(conn) = io.conn_mut(id) {
                    if conn.body.is_done() {
                        complete(io, scenario, id, who);
                    }
                }
            }
            Phase::Body => {
                let step = match conn.body.step(&data[off..]) {
                    Ok(s) => s,
                    Err(_) => {
                        io.fail(id, ErrorKind::BadResponse);
                        return;
                    }
                };
                let payload = &data[off + step.data.start..off + step.data.end];
                off += step.consumed;
                let done = conn.body.is_done();
                if !payload.is_empty() {
                    if !gap_recorded {
                        gap_recorded = true;
                        if let Some(prev) = conn.last_body_read.replace(now) {
                            io.record_duration(Metric::StallGap, now.duration_since(prev));
                        }
                    }
                    Live::add(&io.live.bytes, payload.len() as u64);
                    scenario.on_body(io, id, who, payload);
                }
                if done && io.is_open(id) {
                    complete(io, scenario, id, who);
                }
            }
            Phase::Idle | Phase::Connecting | Phase::Handshaking | Phase::Sending => {
                // Bytes nobody asked for (we never pipeline).
                io.fail(id, ErrorKind::BadResponse);
                return;
            }
        }
    }
}

fn complete<S: Scenario>(io: &mut Io, scenario: &mut S, id: ConnId, who: Who) {
    let Some(conn) = io.conn_mut(id) else {
        return;
    };
    conn.req.clear();
    if conn.keep_alive {
        conn.phase = Phase::Idle;
        scenario.on_complete(io, id, who, true);
    } else {
        io.take(id);
        scenario.on_complete(io, id, who, false);
    }
}
