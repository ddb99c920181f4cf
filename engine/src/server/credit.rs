//! The credit policy: when bytes a connection wrote count as delivered, and how credits reach
//! the ledger.
//!
//! Delivered means acknowledged by the client's TCP (`tcpi_bytes_acked`, read through
//! [`ConnSocket::acked`]), mapped back to content through a
//! [`StreamMap`], with one guard for the client that never reads
//! (see [`ConnCredit::account`]). Each connection that carried catalog content keeps a
//! [`ConnCredit`]; a worker gathers the credits of one loop iteration in a [`CreditBatch`] and
//! hands them to the ledger once (never per chunk).
//!
//! So that a SIGKILL loses none of them, each run of content a connection writes is mirrored,
//! with plain memory stores, in the worker's map file ([`InflightFile`]): how far it was
//! written and how far credited. A response that carries no content but proves a delivery (a
//! whole empty part, a resume after the last byte) is an [`EmptyDelivery`].

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::completion::inflight::{InflightFile, Origin, Slot};
use crate::completion::{AckState, Ledger, StreamMap};

use super::socket::ConnSocket;
use super::stats::WorkerStats;

pub use crate::completion::Credit;

/// Where a worker sends its credits (once per event-loop iteration, never per chunk).
pub type CreditSink = Arc<dyn Fn(Vec<Credit>) + Send + Sync>;

/// The sink that hands a worker's batches to the completion ledger.
pub fn to_ledger(ledger: Ledger) -> CreditSink {
    Arc::new(move |batch| ledger.credit(batch))
}

/// How often the sweep credits a response that is still being sent.
pub const SENDING_POLL_EVERY: Duration = Duration::from_secs(1);

/// Body size from which a response's start samples the client's window (see
/// [`ConnCredit::start_response`]).
const WINDOW_SAMPLE_MIN: u64 = 64 * 1024;

/// Acknowledged content not yet handed to the ledger, gathered over one loop iteration.
pub struct CreditBatch {
    credits: Vec<Credit>,
    sink: Option<CreditSink>,
    /// The worker's map file, where each live run's credited and written offsets survive
    /// SIGKILL (see [`crate::completion::inflight`]).
    inflight: Option<Arc<InflightFile>>,
}

impl CreditBatch {
    pub fn new(sink: Option<CreditSink>) -> CreditBatch {
        CreditBatch {
            credits: Vec::new(),
            sink,
            inflight: None,
        }
    }

    /// Keep each live run's offsets in `file` too.
    pub fn with_inflight(mut self, file: Option<Arc<InflightFile>>) -> CreditBatch {
        self.inflight = file;
        self
    }

    /// Hand the batch to the ledger; records of runs released before now then wait only for
    /// the journal (see [`InflightFile`]).
    pub fn flush(&mut self) {
        if !self.credits.is_empty() {
            coalesce(&mut self.credits);
            let batch = std::mem::take(&mut self.credits);
            if let Some(sink) = &self.sink {
                sink(batch);
            }
        }
        if let Some(f) = &self.inflight {
            f.stamp();
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> &[Credit] {
        &self.credits
    }
}

/// Merge a batch's overlapping or adjacent ranges of the same (user, item, part) delivered by
/// responses started in the same millisecond: a hot small item served many times per loop
/// iteration reaches the ledger as one credit. (Credits of responses started at different
/// moments stay apart: each counts only for a purchase made no later than its response.)
fn coalesce(credits: &mut Vec<Credit>) {
    if credits.len() < 2 {
        return;
    }
    credits.sort_unstable_by(|a, b| {
        (&*a.user, &*a.item, a.part, a.started_ms, a.range.start).cmp(&(
            &*b.user,
            &*b.item,
            b.part,
            b.started_ms,
            b.range.start,
        ))
    });
    credits.dedup_by(|next, kept| {
        let same = kept.part == next.part
            && kept.started_ms == next.started_ms
            && kept.user == next.user
            && kept.item == next.item;
        if same && next.range.start <= kept.range.end {
            kept.range.end = kept.range.end.max(next.range.end);
            true
        } else {
            false
        }
    });
}

/// Delivered-bytes accounting for one connection.
struct Accounting {
    /// Which stream offsets carried which content.
    map: StreamMap,
    /// Tags used in `map`: (user, item, part, when the response carrying it started).
    targets: Vec<(Arc<str>, Arc<str>, u32, i64)>,
    /// When the current response started (Unix milliseconds, the clock of the cart's
    /// `added_at`): taken once per response by [`ConnCredit::start_response`].
    started_ms: i64,
    /// Scratch for newly acknowledged ranges.
    acked: Vec<(u32, Range<u64>)>,
    /// Stream bytes the client provably read (it sent a later request).
    read_upto: u64,
    /// The client's receive window (`tcpi_snd_wnd`) and `tcpi_bytes_acked` when the current
    /// large response started: its buffer then held about twice that window at most.
    start_window: u64,
    start_acked: u64,
    /// When the sweep may poll this connection next while a response is still being sent.
    next_poll: Instant,
    /// Responses with no content that prove something: (tag, content offset `at`, stream
    /// offset where the head ends). Credited `at..at` once the client's TCP acknowledged the
    /// head.
    empties: Vec<(u32, u64, u64)>,
    /// The worker's map file, and this connection's records in it, oldest first.
    inflight: Option<Arc<InflightFile>>,
    runs: Vec<DurableRun>,
    /// Content bytes credited on this connection so far (what `GET /downloads` calls delivered).
    delivered: u64,
    /// The socket's `SO_COOKIE`, read once: recorded with each run so that, after a crash, the
    /// kernel can say how far the orphaned socket was acknowledged.
    cookie: Option<u64>,
}

/// One contiguous run of content of one tag, mirrored in the worker's map file.
struct DurableRun {
    tag: u32,
    slot: Slot,
    /// Where the run started: content offset, and the stream offset that carried it.
    start: u64,
    stream_at: u64,
    /// Content offsets: credited up to `credited`, written up to `written`.
    credited: u64,
    written: u64,
}

impl Drop for Accounting {
    /// The connection is done with these runs: what was not credited by now was not delivered
    /// while weir was alive to see it, so it is no evidence of anything.
    fn drop(&mut self) {
        if let Some(f) = &self.inflight {
            for r in self.runs.drain(..) {
                f.release(r.slot);
            }
        }
    }
}

impl Accounting {
    /// Whether a `TCP_INFO` poll now could credit anything (outside a close or a proof of
    /// reading). While all that was written fits in the client's first receive buffer, a poll
    /// credits no more than the client provably read (see [`ConnCredit::account`]): once that
    /// much is credited, there is nothing to learn. A slow (shaped) download spends its first
    /// two windows there. (`+ 1`: `tcpi_bytes_acked` counts a FIN's sequence number.)
    fn poll_can_credit(&self) -> bool {
        let (written, acked) = (self.map.written(), self.map.acked());
        let within_first_buffer = self.start_window > 0
            && (written + 1).saturating_sub(self.start_acked) <= 2 * self.start_window;
        !within_first_buffer || acked < self.start_acked.max(self.read_upto).min(written)
    }

    /// Mirrors `len` content bytes written from `start` of tag `tag`, carried from stream
    /// offset `stream_at`, into the map file. A run is contiguous in content and in the stream.
    fn durable_written(&mut self, tag: u32, start: u64, len: u64, stream_at: u64) {
        let Some(f) = &self.inflight else {
            return;
        };
        if let Some(r) = self.runs.last_mut() {
            if r.tag == tag && r.written == start && r.stream_at + (start - r.start) == stream_at {
                r.written += len;
                f.set_written(r.slot, r.written);
                return;
            }
        }
        let (user, item, part, started_ms) = &self.targets[tag as usize];
        let origin = self.cookie.map(|cookie| Origin { cookie, stream_at });
        if let Some(slot) = f.claim(user, item, *part, *started_ms, start, origin) {
            f.set_written(slot, start + len);
            self.runs.push(DurableRun {
                tag,
                slot,
                start,
                stream_at,
                credited: start,
                written: start + len,
            });
        }
    }

    /// Mirrors a credit into the map file; frees the records of runs fully credited (but the
    /// newest, which may still grow).
    fn durable_credited(&mut self, tag: u32, range: &Range<u64>) {
        let Some(f) = &self.inflight else {
            return;
        };
        if let Some(r) = self
            .runs
            .iter_mut()
            .find(|r| r.tag == tag && r.credited <= range.start && range.end <= r.written)
        {
            r.credited = range.end;
            f.set_credited(r.slot, r.credited);
        }
        let newest = self.runs.len().saturating_sub(1);
        let mut i = 0;
        self.runs.retain(|r| {
            let keep = i == newest || r.credited < r.written;
            if !keep {
                f.release(r.slot);
            }
            i += 1;
            keep
        });
    }

    /// The tag of (`user`, `item`, `part`) in the current response. Searched from the newest:
    /// each response on a keep-alive connection may add one, and the current one is last.
    fn tag(&mut self, user: &Arc<str>, item: &Arc<str>, part: u32) -> u32 {
        let started = self.started_ms;
        if let Some(i) = self
            .targets
            .iter()
            .rposition(|(u, it, p, s)| *p == part && *s == started && u == user && it == item)
        {
            return i as u32;
        }
        self.targets
            .push((user.clone(), item.clone(), part, started));
        (self.targets.len() - 1) as u32
    }
}

/// A response with no content that proves a delivery once its head is acknowledged (see
/// [`ConnCredit::start_response`]).
pub struct EmptyDelivery<'a> {
    pub user: &'a Arc<str>,
    pub item: &'a Arc<str>,
    pub part: u32,
    /// The content offset credited as `at..at`.
    pub at: u64,
    /// Length of the response head (and of its in-head body, if any).
    pub head: u64,
}

/// One connection's credit state: nothing until it carries content that counts toward
/// completion, then a stream map until everything written was credited.
#[derive(Default)]
pub struct ConnCredit {
    acct: Option<Box<Accounting>>,
}

impl ConnCredit {
    /// A request arrived: the client read everything before it (it sends its next request
    /// after reading the previous response). Only marked: the sweep polls `TCP_INFO`, so
    /// keep-alive requests cost no extra syscall.
    pub fn on_request(&mut self) {
        if let Some(a) = self.acct.as_deref_mut() {
            a.read_upto = a.map.written();
        }
    }

    /// A response whose body counts toward completion starts, `written` stream bytes into the
    /// connection, with `body` bytes of body.
    ///
    /// `empty`: the response carries no content but proves something (user, item, part,
    /// content offset `at`, head length): a whole empty part (`at` 0), or a resume after the
    /// last byte (`at` = the part's length). There is no byte to acknowledge, so what proves
    /// its delivery is the client's TCP acknowledging the whole head: then it is credited
    /// `at..at`. That completes a purchase whose every part is complete, and is a resume offset
    /// for the evidence rule (see [`crate::completion::ledger`]).
    pub fn start_response(
        &mut self,
        sock: &impl ConnSocket,
        batch: &CreditBatch,
        written: u64,
        body: u64,
        empty: Option<EmptyDelivery<'_>>,
        now: Instant,
    ) {
        let a = self.acct.get_or_insert_with(|| {
            let mut map = StreamMap::new();
            map.push_overhead(written);
            Box::new(Accounting {
                map,
                targets: Vec::new(),
                acked: Vec::new(),
                read_upto: 0,
                started_ms: 0,
                start_window: 0,
                start_acked: 0,
                next_poll: now,
                empties: Vec::new(),
                inflight: batch.inflight.clone(),
                runs: Vec::new(),
                delivered: 0,
                cookie: batch.inflight.as_ref().and_then(|_| sock.cookie()),
            })
        });
        // Once per response (a vDSO clock read, no syscall): the credits of this response count
        // only for a purchase made no later (see [`crate::completion::ledger`]).
        a.started_ms = crate::storage::now_ms() as i64;
        if let Some(e) = empty {
            let tag = a.tag(e.user, e.item, e.part);
            a.empties.push((tag, e.at, written + e.head));
        }
        // The client's window now, before a large body fills its buffer: the baseline for how
        // much acknowledged data it might not have read.
        a.start_window = 0;
        if body >= WINDOW_SAMPLE_MIN {
            if let Ok(AckState {
                bytes_acked,
                window: Some(w),
                ..
            }) = sock.acked()
            {
                a.start_window = u64::from(w);
                a.start_acked = bytes_acked;
            }
        }
    }

    /// The next `len` stream bytes written carry no content.
    pub fn record_overhead(&mut self, len: u64) {
        if let Some(a) = self.acct.as_deref_mut() {
            a.map.push_overhead(len);
        }
    }

    /// The next `len` stream bytes written are bytes `start..start + len` of `part` of `item`,
    /// downloaded by `user`.
    pub fn record_content(
        &mut self,
        user: &Arc<str>,
        item: &Arc<str>,
        part: u32,
        start: u64,
        len: u64,
    ) {
        if let Some(a) = self.acct.as_deref_mut() {
            let tag = a.tag(user, item, part);
            let stream_at = a.map.written();
            a.map.push_content(tag, start, len);
            a.durable_written(tag, start, len, stream_at);
        }
    }

    /// Content bytes of this connection the client's TCP acknowledged and weir credited so far.
    pub fn delivered(&self) -> u64 {
        self.acct.as_ref().map_or(0, |a| a.delivered)
    }

    /// Written and not yet credited stream bytes exist.
    pub fn in_flight(&self) -> bool {
        self.acct.as_ref().is_some_and(|a| a.map.in_flight() > 0)
    }

    /// Credit content the client's TCP acknowledged. `proof`: the client provably read all it
    /// acknowledged (a clean FIN); `closing`: the connection is ending now; `idle`: no response
    /// is being sent.
    pub fn account(
        &mut self,
        sock: &impl ConnSocket,
        stats: &WorkerStats,
        batch: &mut CreditBatch,
        proof: bool,
        closing: bool,
        idle: bool,
    ) {
        let Some(a) = self.acct.as_deref_mut() else {
            return;
        };
        if a.map.in_flight() == 0 {
            return;
        }
        let Ok(AckState {
            bytes_acked: acked,
            window,
            peer_ended,
        }) = sock.acked()
        else {
            return;
        };
        // Bytes within the first receive buffer of a large response (about two windows as
        // advertised when it started) may sit unread in the client's kernel. A poll does not
        // credit them until the client acknowledged more than that (it must be reading), proves
        // it read (`proof`: a clean FIN), or the connection ends with its window open or by the
        // client's own hand. A client that holds the connection with its window shut, having
        // acknowledged no more than that buffer, never read anything: when weir gives up on it
        // (send timeout, drain) it is credited nothing.
        //
        // A client that ends the connection itself is credited what its TCP acknowledged, as
        // delivery is defined. A download manager that re-splits a range drops the connection it
        // shortened once it read up to the new end, with a buffer of unread bytes behind: had it
        // read 40 KB or nothing, the server sees the same acknowledgments (the window does not
        // reopen by less than a segment), and nobody fetches those 40 KB again.
        let within_first_buffer =
            a.start_window > 0 && acked.saturating_sub(a.start_acked) <= 2 * a.start_window;
        let upto =
            if proof || !within_first_buffer || (closing && (peer_ended || window != Some(0))) {
                acked
            } else {
                a.start_acked.max(acked.min(a.read_upto))
            };
        a.acked.clear();
        a.map.acknowledge_into(upto, &mut a.acked);
        let credited: u64 = a.acked.iter().map(|(_, r)| r.end - r.start).sum();
        a.delivered += credited;
        stats.add(&stats.bytes_credited, credited);
        if !a.empties.is_empty() {
            let acked = a.map.acked();
            a.empties.retain(|&(tag, at, end)| {
                let done = end <= acked;
                if done {
                    a.acked.push((tag, at..at));
                }
                !done
            });
        }
        let mut acked = std::mem::take(&mut a.acked);
        for (tag, range) in &acked {
            a.durable_credited(*tag, range);
        }
        for (tag, range) in acked.drain(..) {
            let (user, item, part, started_ms) = &a.targets[tag as usize];
            batch.credits.push(Credit {
                user: user.clone(),
                item: item.clone(),
                part: *part,
                started_ms: *started_ms,
                range,
            });
        }
        a.acked = acked;
        if a.map.in_flight() == 0 && idle {
            // Idle and everything sent was credited: keep no accounting state (the next
            // response starts a new map at the current stream offset).
            self.acct = None;
        }
    }

    /// The sweep's periodic credit. While a response is still being sent (`sending`), at most
    /// once per [`SENDING_POLL_EVERY`]: the ledger journals progress once a second anyway, and
    /// 8,000 slow shaped downloads polled every sweep cost 32,000 `getsockopt` calls a second.
    /// Once the response is all written, every sweep, so the last bytes complete the item
    /// promptly. Not at all while the poll could credit nothing.
    pub fn sweep(
        &mut self,
        sock: &impl ConnSocket,
        stats: &WorkerStats,
        batch: &mut CreditBatch,
        now: Instant,
        sending: bool,
    ) {
        let Some(a) = self.acct.as_deref_mut() else {
            return;
        };
        if a.map.in_flight() == 0 || !a.poll_can_credit() {
            return;
        }
        if sending {
            if now < a.next_poll {
                return;
            }
            a.next_poll = now + SENDING_POLL_EVERY;
        }
        self.account(sock, stats, batch, false, false, !sending);
    }

    /// One more empty delivery in the response [`ConnCredit::start_response`] just started at
    /// stream offset `written`: an album zip's empty track, credited `e.at..e.at` once the
    /// client acknowledged the stream up to `written + e.head` (its entry's local header).
    pub fn add_empty(&mut self, written: u64, e: EmptyDelivery<'_>) {
        if let Some(a) = self.acct.as_deref_mut() {
            let tag = a.tag(e.user, e.item, e.part);
            a.empties.push((tag, e.at, written + e.head));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::socket::FakeSocket;

    /// Accounting for a response that wrote `written` stream bytes (a 300-byte head, then
    /// content) after a client window of `window` at `start_acked`, with `acked` credited.
    fn acct(window: u64, start_acked: u64, read_upto: u64, written: u64, acked: u64) -> Accounting {
        let mut map = StreamMap::new();
        map.push_overhead(300);
        map.push_content(0, 0, written - 300);
        map.acknowledge(acked);
        Accounting {
            map,
            targets: Vec::new(),
            acked: Vec::new(),
            read_upto,
            started_ms: 0,
            start_window: window,
            start_acked,
            next_poll: Instant::now(),
            empties: Vec::new(),
            inflight: None,
            runs: Vec::new(),
            delivered: 0,
            cookie: None,
        }
    }

    #[test]
    fn no_poll_while_it_could_credit_nothing() {
        let w = 64 * 1024;
        // Inside the first buffer, the start already credited: nothing to learn.
        assert!(!acct(w, 300, 0, 100_000, 300).poll_can_credit());
        assert!(!acct(w, 300, 0, 300 + 2 * w - 1, 300).poll_can_credit());
        // Written past two windows: the client may have read, so poll.
        assert!(acct(w, 300, 0, 300 + 2 * w, 300).poll_can_credit());
        // Not yet credited up to where the response started, or to what the client provably
        // read: poll.
        assert!(acct(w, 300, 0, 100_000, 0).poll_can_credit());
        assert!(acct(w, 300, 50_000, 100_000, 300).poll_can_credit());
        assert!(!acct(w, 300, 50_000, 100_000, 50_000).poll_can_credit());
        // No window known at the start: every poll may credit.
        assert!(acct(0, 300, 0, 100_000, 300).poll_can_credit());
    }

    fn ack(bytes_acked: u64) -> FakeSocket {
        FakeSocket {
            ack: Some(AckState {
                bytes_acked,
                window: Some(65_535),
                peer_ended: false,
            }),
            ..FakeSocket::default()
        }
    }

    /// The map file mirrors what a connection wrote and what was credited, with no call but
    /// memory stores; a record outlives its run until the ledger journaled its credits.
    #[test]
    fn the_map_file_mirrors_written_and_credited_offsets() {
        use crate::completion::inflight::{self, Watermark};
        let dir = tempfile::tempdir().unwrap();
        let w = Watermark::default();
        let file = Arc::new(InflightFile::create(dir.path(), 0, 8, w.clone()).unwrap());
        let mut batch = CreditBatch::new(None).with_inflight(Some(file.clone()));
        let stats = WorkerStats::default();
        let (user, item): (Arc<str>, Arc<str>) = ("alice".into(), "movie".into());
        let mut cc = ConnCredit::default();
        let now = Instant::now();
        cc.start_response(&ack(0), &batch, 0, 1000, None, now);
        cc.record_overhead(100);
        cc.record_content(&user, &item, 0, 5000, 600);
        cc.record_content(&user, &item, 0, 5600, 400);
        let records = || inflight::parse(&std::fs::read(file.path()).unwrap());
        assert_eq!(
            (
                records()[0].start,
                records()[0].credited,
                records()[0].written
            ),
            (5000, 5000, 6000)
        );
        // The client's TCP acknowledged the head and 300 content bytes.
        cc.account(&ack(400), &stats, &mut batch, false, false, false);
        assert_eq!(records()[0].credited, 5300);
        assert_eq!(batch.pending()[0].range, 5000..5300);
        // All of it, and the connection goes idle: the run is over, but its record stays live
        // until the ledger's watermark passes the batch's hand-over.
        cc.account(&ack(1100), &stats, &mut batch, true, false, true);
        batch.flush();
        assert_eq!(records().len(), 1);
        assert_eq!(records()[0].credited, 6000);
        w.advance(inflight::clock_ns());
        cc.start_response(&ack(1100), &batch, 1100, 10, None, now);
        cc.record_content(&user, &item, 0, 0, 10);
        assert_eq!(records().len(), 1, "the old record was freed and reused");
        assert_eq!(records()[0].start, 0);
    }

    /// A 200 of an empty part is credited `0..0`, only once its head was acknowledged.
    #[test]
    fn an_empty_part_is_credited_once_its_head_is_acknowledged() {
        let mut batch = CreditBatch::new(None);
        let stats = WorkerStats::default();
        let (user, item): (Arc<str>, Arc<str>) = ("alice".into(), "empty".into());
        let mut cc = ConnCredit::default();
        let empty = EmptyDelivery {
            user: &user,
            item: &item,
            part: 0,
            at: 0,
            head: 200,
        };
        cc.start_response(&ack(0), &batch, 0, 0, Some(empty), Instant::now());
        cc.record_overhead(200);
        cc.account(&ack(199), &stats, &mut batch, false, false, true);
        assert!(batch.pending().is_empty());
        cc.account(&ack(200), &stats, &mut batch, false, true, true);
        let got = batch.pending();
        assert_eq!(got.len(), 1);
        assert!(got[0].started_ms > 0, "stamped with the response's start");
        assert_eq!(
            Credit {
                started_ms: 0,
                ..got[0].clone()
            },
            c("alice", "empty", 0, 0..0)
        );
    }

    fn c(user: &str, item: &str, part: u32, r: Range<u64>) -> Credit {
        Credit {
            user: Arc::from(user),
            item: Arc::from(item),
            part,
            started_ms: 0,
            range: r,
        }
    }

    #[test]
    fn coalesce_merges_same_target_only() {
        let mut v = vec![
            c("a", "x", 0, 0..4096),
            c("a", "x", 0, 0..4096),
            c("b", "x", 0, 0..10),
            c("a", "x", 0, 4096..5000),
            c("a", "x", 1, 0..10),
            c("a", "x", 0, 6000..7000),
            Credit {
                started_ms: 9,
                ..c("a", "x", 0, 5000..6000)
            },
        ];
        coalesce(&mut v);
        assert_eq!(
            v,
            vec![
                c("a", "x", 0, 0..5000),
                c("a", "x", 0, 6000..7000),
                // Another response's credit: it may count for another purchase.
                Credit {
                    started_ms: 9,
                    ..c("a", "x", 0, 5000..6000)
                },
                c("a", "x", 1, 0..10),
                c("b", "x", 0, 0..10),
            ]
        );
    }
}
