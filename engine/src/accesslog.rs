//! The access log: one line per response, written by its own thread, never by an I/O worker.
//!
//! A connection keeps its current response's facts in a [`ConnLog`] (a few `Arc` clones and
//! counters, no allocation, kept whether or not a log is configured: the admin listener's
//! `GET /downloads` reads the same facts). When the response is over, the connection turns them
//! into a [`Record`] and hands it to the [`AccessLog`] with a non-blocking `try_send` into a
//! bounded queue ([`QUEUE`]); when the queue is full the line is dropped and counted
//! (`weir_access_log_dropped_total`), so a slow disk never slows a worker. The writer thread
//! wakes every [`TICK`], takes what is queued, formats it (text or JSON, like the other log
//! lines: `--log-format`) and writes it in one buffered go. It never sleeps on the queue itself,
//! so a worker's `try_send` never has a sleeping reader to wake (no syscall per line on an I/O
//! thread). [`AccessLog::reopen`] (SIGUSR1) makes it close and reopen the file, so `logrotate`
//! can rename it away first; [`AccessLog::close`] writes what is queued before weir exits.
//!
//! A response's line is written when its connection moves on: at the next request (then the
//! client read it all, and every byte sent counts as acknowledged) or when the connection
//! closes (then what the client's TCP acknowledged comes from one `TCP_INFO` read). So a
//! keep-alive response costs no syscall, and `bytes_acked` says what reached the client.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::LogFormat;

/// Lines waiting for the writer at most; past it they are dropped and counted.
pub const QUEUE: usize = 64 * 1024;
/// How often the writer takes the queued lines.
pub const TICK: Duration = Duration::from_millis(50);

/// One finished response.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request began (wall clock).
    pub time: SystemTime,
    pub user: Option<Arc<str>>,
    pub item: Option<Arc<str>>,
    /// Part (track) index of a file or album track; none for a zip or an error.
    pub part: Option<u32>,
    /// The request's `Range` header.
    pub range: Option<Box<str>>,
    pub status: u16,
    /// Bytes of this response (head and body) handed to the kernel.
    pub bytes_sent: u64,
    /// Of those, bytes the client's TCP acknowledged.
    pub bytes_acked: u64,
    /// From the request to the last byte handed to the kernel (or to the close).
    pub duration: Duration,
    pub client: Option<IpAddr>,
}

/// Counters the writer and the workers keep, for `/metrics`.
#[derive(Debug, Default)]
pub struct AccessLogStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

impl AccessLogStats {
    /// `(name, help, value)` rows for `/metrics`.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            (
                "weir_access_log_lines_total",
                "Access log lines written.",
                self.written.load(Relaxed),
            ),
            (
                "weir_access_log_dropped_total",
                "Access log lines dropped because the writer's queue was full.",
                self.dropped.load(Relaxed),
            ),
            (
                "weir_access_log_write_errors_total",
                "Failed writes or reopens of the access log.",
                self.write_errors.load(Relaxed),
            ),
        ]
    }
}

enum Control {
    Reopen,
    /// Write what is queued, then answer on the channel and stop.
    Close(Sender<()>),
}

/// The workers' handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct AccessLog {
    tx: Sender<Record>,
    control: Sender<Control>,
    stats: Arc<AccessLogStats>,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output, anything else a file path (appended to, created if missing).
    pub fn parse(s: &str) -> Target {
        if s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        }
    }
}

impl AccessLog {
    /// Open the target and start the writer thread. `driver` is written on every line.
    pub fn start(target: Target, format: LogFormat, driver: String) -> io::Result<AccessLog> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(AccessLogStats::default());
        let out = open(&target)?;
        let mut writer = Writer {
            target,
            format,
            driver,
            out,
            stats: stats.clone(),
            line: String::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("weir-accesslog".into())
            .spawn(move || writer.run(rx, control_rx))?;
        Ok(AccessLog { tx, control, stats })
    }

    /// Queue a line; dropped (and counted) if the writer is behind.
    pub fn log(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Close and reopen the file (after logrotate renamed it).
    pub fn reopen(&self) {
        let _ = self.control.send(Control::Reopen);
    }

    /// Write every queued line and stop the writer (at exit, once the workers stopped).
    pub fn close(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.control.send(Control::Close(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    pub fn stats(&self) -> Arc<AccessLogStats> {
        self.stats.clone()
    }
}

fn open(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(BufWriter::with_capacity(64 * 1024, io::stdout())),
        Target::File(path) => {
            let f: File = OpenOptions::new().create(true).append(true).open(path)?;
            Box::new(BufWriter::with_capacity(64 * 1024, f))
        }
    })
}

struct Writer {
    target: Target,
    format: LogFormat,
    driver: String,
    out: Box<dyn Write + Send>,
    stats: Arc<AccessLogStats>,
    line: String,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Record>, control: Receiver<Control>) {
        use crossbeam_channel::RecvTimeoutError;
        loop {
            let mut done = None;
            let mut stop = false;
            match control.recv_timeout(TICK) {
                Ok(Control::Reopen) => self.reopen(),
                Ok(Control::Close(tx)) => done = Some(tx),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            let mut wrote = false;
            while let Ok(r) = rx.try_recv() {
                self.write(&r);
                wrote = true;
            }
            if wrote {
                self.flush();
            }
            if let Some(tx) = done {
                let _ = tx.send(());
                return;
            }
            if stop {
                return;
            }
        }
    }

    fn write(&mut self, r: &Record) {
        self.line.clear();
        format_record(&mut self.line, r, self.format, &self.driver);
        if self.out.write_all(self.line.as_bytes()).is_err() {
            self.stats.write_errors.fetch_add(1, Relaxed);
        } else {
            self.stats.written.fetch_add(1, Relaxed);
        }
    }

    fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.stats.write_errors.fetch_add(1, Relaxed);
        }
    }

    fn reopen(&mut self) {
        self.flush();
        match open(&self.target) {
            Ok(out) => {
                self.out = out;
                tracing::info!("access log reopened");
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "access log: reopening failed; writing on to the old file");
            }
        }
    }
}

/// One line, newline included. Text: the time, then `key=value` pairs (logfmt; `-` for none,
/// the range quoted). JSON: one object with the same keys.
pub fn format_record(out: &mut String, r: &Record, format: LogFormat, driver: &str) {
    use std::fmt::Write as _;
    let time = humantime::format_rfc3339_micros(r.time);
    let ms = r.duration.as_secs_f64() * 1000.0;
    match format {
        LogFormat::Text => {
            // Written field by field: no allocation per line.
            let user = r.user.as_deref().unwrap_or("-");
            let item = r.item.as_deref().unwrap_or("-");
            let _ = write!(out, "{time} user={user} item={item} part=");
            match r.part {
                Some(p) => write!(out, "{p}"),
                None => write!(out, "-"),
            }
            .ok();
            match r.range.as_deref() {
                Some(v) => write!(out, " range={v:?}"),
                None => write!(out, " range=-"),
            }
            .ok();
            let _ = write!(
                out,
                " status={} bytes_sent={} bytes_acked={} duration_ms={ms:.3} client=",
                r.status, r.bytes_sent, r.bytes_acked
            );
            match r.client {
                Some(a) => write!(out, "{a}"),
                None => write!(out, "-"),
            }
            .ok();
            let _ = write!(out, " driver={driver}");
        }
        LogFormat::Json => {
            let v = serde_json::json!({
                "time": time.to_string(),
                "user": r.user.as_deref(),
                "item": r.item.as_deref(),
                "part": r.part,
                "range": r.range.as_deref(),
                "status": r.status,
                "bytes_sent": r.bytes_sent,
                "bytes_acked": r.bytes_acked,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "client": r.client.map(|a| a.to_string()),
                "driver": driver,
            });
            let _ = write!(out, "{v}");
        }
    }
    out.push('\n');
}

/// A connection's current response, as the access log and `GET /downloads` see it. Kept by
/// the connection state machine at no cost beyond a few `Arc` clones per request.
#[derive(Debug, Default)]
pub struct ConnLog {
    /// A response started and its line is not written yet.
    pub open: bool,
    pub time: Option<SystemTime>,
    pub began: Option<Instant>,
    pub user: Option<Arc<str>>,
    pub item: Option<Arc<str>>,
    pub part: Option<u32>,
    pub range: Option<Box<str>>,
    pub status: u16,
    /// Connection stream offset where the response began.
    pub stream_start: u64,
    /// Stream offset after its last byte, once all of it was handed to the kernel.
    pub stream_end: Option<u64>,
    pub finished: Option<Instant>,
    /// The peer's address, read once per connection (only for the log).
    pub client: Option<IpAddr>,
    pub client_known: bool,
    /// `GET /downloads`: sent bytes and time at the previous snapshot, for the current rate.
    pub snap_sent: u64,
    pub snap_at: Option<Instant>,
}

impl ConnLog {
    /// A request arrived: remember what it asks for. `logging`: an access log is configured
    /// (the item name and range are copied only then).
    pub fn request(&mut self, now: Instant, item: &str, range: Option<&str>, logging: bool) {
        self.began = Some(now);
        self.time = None;
        self.user = None;
        self.part = None;
        self.item = None;
        self.range = None;
        self.snap_at = None;
        self.snap_sent = 0;
        if logging {
            self.time = Some(SystemTime::now());
            self.item = Some(Arc::from(item));
            self.range = range.map(Box::from);
        }
    }

    /// The request is served to `user`: the item's shared name and the part.
    pub fn serve(&mut self, user: &Arc<str>, item: &Arc<str>, part: Option<u32>) {
        self.user = Some(user.clone());
        self.item = Some(item.clone());
        self.part = part;
    }

    /// A response with `status` begins at stream offset `written`.
    pub fn start(&mut self, now: Instant, status: u16, written: u64, logging: bool) {
        if self.began.is_none() {
            // A malformed request: no request was begun.
            self.began = Some(now);
            self.user = None;
            self.item = None;
            self.part = None;
            self.range = None;
        }
        if logging && self.time.is_none() {
            self.time = Some(SystemTime::now());
        }
        self.open = true;
        self.status = status;
        self.stream_start = written;
        self.stream_end = None;
        self.finished = None;
    }

    /// All of the response was handed to the kernel.
    pub fn finish(&mut self, now: Instant, written: u64) {
        self.stream_end = Some(written);
        self.finished = Some(now);
    }

    /// The response is over, if one is open: the bytes of it acknowledged, and its line when
    /// `logging`. `written`: the connection's stream offset now; `acked`: the stream bytes the
    /// client's TCP acknowledged (`None`: all).
    pub fn take(
        &mut self,
        now: Instant,
        written: u64,
        acked: Option<u64>,
        logging: bool,
    ) -> Option<(u64, Option<Record>)> {
        if !self.open {
            return None;
        }
        self.open = false;
        let end = self.stream_end.unwrap_or(written);
        let sent = end.saturating_sub(self.stream_start);
        let acked = match acked {
            None => sent,
            Some(a) => a.saturating_sub(self.stream_start).min(sent),
        };
        let began = self.began.take().unwrap_or(now);
        if !logging {
            return Some((acked, None));
        }
        let duration = self
            .finished
            .unwrap_or(now)
            .saturating_duration_since(began);
        let record = Record {
            time: self.time.take().unwrap_or_else(SystemTime::now),
            user: self.user.clone(),
            item: self.item.clone(),
            part: self.part,
            range: self.range.take(),
            status: self.status,
            bytes_sent: sent,
            bytes_acked: acked,
            duration,
            client: self.client,
        };
        Some((acked, Some(record)))
    }

    /// The response being sent, for `GET /downloads`: its user, item, bytes sent so far, the
    /// content bytes its connection delivered (acknowledged and credited), its start, and the
    /// rate since the previous snapshot (bytes/s; none at the first).
    pub fn live(&mut self, now: Instant, written: u64, delivered: u64) -> Option<LiveDownload> {
        if !self.open || self.stream_end.is_some() {
            return None;
        }
        let (user, item) = (self.user.clone()?, self.item.clone()?);
        let sent = written.saturating_sub(self.stream_start);
        let rate = self.snap_at.map(|at| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                (sent.saturating_sub(self.snap_sent) as f64 / secs) as u64
            } else {
                0
            }
        });
        self.snap_at = Some(now);
        self.snap_sent = sent;
        Some(LiveDownload {
            user,
            item,
            sent,
            delivered,
            began: self.began.unwrap_or(now),
            rate,
        })
    }
}

/// One connection's live download, as a worker publishes it.
#[derive(Debug, Clone)]
pub struct LiveDownload {
    pub user: Arc<str>,
    pub item: Arc<str>,
    pub sent: u64,
    /// Content bytes of the connection the client's TCP acknowledged (credited by the
    /// sweep's poll, so about a second behind).
    pub delivered: u64,
    pub began: Instant,
    /// Bytes per second since the worker's previous snapshot.
    pub rate: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            user: Some(Arc::from("alice")),
            item: Some(Arc::from("song")),
            part: Some(0),
            range: Some("bytes=0-99".into()),
            status: 206,
            bytes_sent: 400,
            bytes_acked: 400,
            duration: Duration::from_micros(1500),
            client: Some("127.0.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn text_and_json_lines_carry_every_field() {
        let mut text = String::new();
        format_record(&mut text, &record(), LogFormat::Text, "epoll");
        assert_eq!(
            text,
            "2026-09-21T14:13:20.000000Z user=alice item=song part=0 range=\"bytes=0-99\" \
             status=206 bytes_sent=400 bytes_acked=400 duration_ms=1.500 client=127.0.0.1 driver=epoll\n"
        );
        let mut json = String::new();
        format_record(&mut json, &record(), LogFormat::Json, "epoll");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["bytes_acked"], 400);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["driver"], "epoll");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let (control, _c) = crossbeam_channel::unbounded();
        let log = AccessLog {
            tx,
            control,
            stats: Arc::default(),
        };
        log.log(record());
        log.log(record());
        log.log(record());
        assert_eq!(log.stats.dropped.load(Relaxed), 2);
    }

    #[test]
    fn acked_bytes_are_those_of_this_response() {
        let now = Instant::now();
        let mut c = ConnLog::default();
        c.request(now, "song", None, true);
        c.start(now, 200, 1000, true);
        c.finish(now, 1500);
        let (acked, r) = c.take(now, 1500, Some(1200), true).unwrap();
        let r = r.unwrap();
        assert_eq!((r.bytes_sent, r.bytes_acked, acked), (500, 200, 200));
        assert!(
            c.take(now, 1500, None, true).is_none(),
            "one line per response"
        );
    }
}
