//! The completion ledger: the thread that turns credited byte ranges into completions, durably.
//!
//! I/O workers learn, from `tcpi_bytes_acked` and their [`StreamMap`](super::StreamMap)s, which
//! content bytes reached a client, and hand them over as [`Credit`]s with [`Ledger::credit`]
//! (once per event-loop iteration, never blocking: the channel is unbounded). One ledger thread
//! owns all progress; nothing here ever runs on an I/O worker.
//!
//! # What counts
//!
//! - Progress is kept per *purchase*: (user, item, the cart row's `added_at`). A credit counts
//!   only while the item is in the user's cart; a credit for an item that is not (a download
//!   manager's last ranges during the grace period after completion, a removed item) is ignored.
//!   When the cart row disappears or its `added_at` changes (bought again), the old progress is
//!   discarded, in memory and in the journal.
//! - **A credit counts only for a purchase made no later than the response that delivered it
//!   started.** Every [`Credit`] carries its response's start ([`Credit::started_ms`], the
//!   wall clock the cart's `added_at` is taken with, read once per response), and so do the map
//!   records replayed after a crash and the evidence spans made of them. A credit, replayed
//!   record or evidence span whose response started before the current cart row's `added_at`
//!   was earned for an earlier purchase (a connection still delivering the old download in the
//!   grace period after the item was bought again, a record or span outliving its purchase): it
//!   is ignored, never applied to the new purchase. Edge cases: a response started in the very
//!   millisecond of the re-purchase counts for it (the clocks cannot tell them apart; see the
//!   end of these docs), and a wall clock stepped back between a response's start and a
//!   re-purchase can let that response count; either harms only that user's own cart.
//! - Each part keeps an [`IntervalSet`]: part 0 of a file, part `n` (0-based) of an album's
//!   track `n`. Ranges are clipped to the part's size; a part index the item does not have is
//!   ignored. Zip ranges are mapped to tracks by the caller
//!   ([`ZipLayout::track_intervals`](super::ZipLayout::track_intervals)).
//! - An item completes when every part covers `0..size`. Nothing else completes an item: zero
//!   false completions. (An item whose parts are all empty completes on its first credit.)
//!
//! # Completion
//!
//! One call of [`Storage::commit_completion`], atomic and durable (for SQLite: one transaction
//! committed with `synchronous = FULL`, the WAL fsynced before the commit returns): delete the
//! cart row *with the purchase's `added_at`* (if it is gone, the purchase ended and nothing is
//! recorded), insert a `history` row, append an `events` row (kind `completed`), queue a
//! [`webhook`] outbox event when a webhook is configured, delete the purchase's progress. So a completion happens once per purchase,
//! also across restarts: afterwards the cart row is gone and further credits are ignored.
//!
//! # Journal and durability
//!
//! Progress is journaled through [`Storage::save_progress`], one row per part (for SQLite the
//! `progress` table, holding the set's [`IntervalSet::to_bytes`]). Parts that changed are
//! written every `flush_interval` (default 1 s) in one transaction, on a connection opened with
//! [`Durability::Normal`] (`synchronous = NORMAL`):
//!
//! - **SIGKILL** loses nothing committed: a committed WAL frame is in the OS page cache, and the
//!   kernel writes it whatever happens to the process. At most the credits received since the
//!   last flush are lost (they were never committed).
//! - **Power loss or a kernel crash** may also lose the last flush intervals of *progress* (not
//!   yet fsynced), never a completion: every completion commit is `FULL`, and fsyncing the WAL
//!   also makes every earlier frame durable.
//!
//! Lost progress only means a client fetches those bytes again; it can never cause a false
//! completion. [`LedgerThread::shutdown`] flushes before it returns (the SIGTERM drain).
//!
//! # Crash recovery: credits kept, and the evidence rule
//!
//! The journal alone would lose, at a SIGKILL, the credits of the last flush interval and
//! everything the client's TCP acknowledged since the last `TCP_INFO` poll. Two more things
//! close that gap (see [`super::inflight`]):
//!
//! 1. **What weir credited survives.** Each worker mirrors every live response run (user, item,
//!    part, start, credited up to, written up to) into its map file with plain memory stores; a
//!    record is freed only after the journal holds its credits (the [`Watermark`]). On start,
//!    before any worker runs, the ledger credits `start..credited` of every record left behind.
//! 2. **What weir wrote but had not seen acknowledged is evidence, not delivery.** For each
//!    record, `credited..written` becomes a pending [`Evidence`] span, kept in
//!    `inflight/evidence.json` (fsynced) for a day. A later credit for the same user, item and
//!    part whose range starts at `n` with `credited < n <= written` (a resume from `n`: curl
//!    `-C -`, `wget -c`, aria2c's control file, axel's state file all send `Range: bytes=n-`)
//!    proves the client held `credited..n`: that is credited and the span used up. A resume
//!    after the last byte (`bytes=LEN-`, answered 416) counts as a resume at `LEN`.
//!
//! Bound: the evidence rule credits at most what one connection had written and not seen
//! acknowledged when weir died (its send queue plus what was in flight and in the client's
//! receive buffer), once. A client that lies about `n` gains only that span of its *own* cart
//! item: a false completion can harm only the liar. A download that is never resumed is never
//! credited more than its acknowledged bytes, so it never completes.
//!
//! 3. **What the kernel saw acknowledged after weir died is delivery.** The kernel closes a
//!    killed process's sockets gracefully and goes on sending their queues; a client reading
//!    on may hold a span no resume will ever start inside. Records carry their socket's cookie
//!    ([`inflight::Origin`]); on start the orphaned sockets are looked up ([`super::orphans`])
//!    and what they saw acknowledged is credited (FIN-WAIT-2 and TIME-WAIT: everything
//!    written), the rest stays evidence; sockets still sending are looked up again every flush
//!    ([`Watch`]) for up to 150 s.
//!
//! What is still lost: bytes of a send the kernel executed that the worker had not recorded
//! when it was killed (a SIGKILL arriving during `io_uring_enter` or `sendmsg` takes effect as
//! the call returns, after the kernel queued the bytes), when the client completes its range
//! with them and never asks again; and, while the journal is failing, credits of runs already
//! over if the process is then killed (a double fault).
//!
//! # A full disk
//!
//! A failing journal write (disk full, read-only filesystem) is logged once when it starts
//! failing and once when it recovers; meanwhile `weir_journal_failing` is 1, serving goes on,
//! progress and completions wait in memory and are retried every flush, and map records are not
//! freed (their credits are not journaled).
//!
//! On start, progress rows whose purchase no longer matches the cart are deleted and the rest
//! is loaded (a purchase found complete is completed then). Purchases idle for a while are
//! dropped from memory after a flush and reloaded from the journal on their next credit.
//!
//! A re-purchase within the same millisecond as the previous `cart add` of the same item
//! cannot be told apart from the earlier one; the earlier progress then carries over (those
//! bytes were still delivered to that user). Likewise a response of the earlier purchase that
//! started in the very millisecond the item was bought again counts for the new purchase
//! (`started_ms == added_at`): the bound of the rule is the bytes of responses started in that
//! one millisecond, of that user's own item.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::inflight::{self, Watermark};
use super::stats::LedgerStats;
use super::webhook::{self, Signal};
use crate::intervals::IntervalSet;
use crate::storage::{
    Completed, Completion, Durability, ProgressWrite, SqliteStore, Storage, StoreError,
};

/// Default for [`LedgerConfig::flush_interval`].
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`LedgerConfig::webhook_timeout`].
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// A purchase with no credit for this long and nothing unflushed leaves memory (it stays in
/// the journal and is reloaded on its next credit).
const EVICT_AFTER: Duration = Duration::from_secs(600);
/// Most channel messages handled before completions are checked and the flush timer looked at.
const MAX_ROUND: usize = 1024;

/// Content bytes of one part of an item that reached a user's client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    pub user: Arc<str>,
    pub item: Arc<str>,
    /// 0 for a file; the 0-based track index for an album.
    pub part: u32,
    /// When the response that delivered the range started (Unix milliseconds): the credit
    /// counts only for a purchase whose `added_at` is no later.
    pub started_ms: i64,
    /// Byte range within the part.
    pub range: Range<u64>,
}

/// What [`Ledger::start`] runs with.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// The data directory ([`SqliteStore::open`]).
    pub data_dir: PathBuf,
    /// How often changed progress is written to the journal. Default 1 s.
    pub flush_interval: Duration,
    /// URL completions are POSTed to, if any.
    pub webhook: Option<String>,
    /// Timeout of one webhook POST (connect, send, answer). Default 10 s.
    pub webhook_timeout: Duration,
}

impl LedgerConfig {
    /// The defaults, on `data_dir`, with no webhook.
    pub fn new(data_dir: impl Into<PathBuf>) -> LedgerConfig {
        LedgerConfig {
            data_dir: data_dir.into(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            webhook: None,
            webhook_timeout: DEFAULT_WEBHOOK_TIMEOUT,
        }
    }
}

enum Msg {
    Credits(Vec<Credit>),
    Flush,
    Sync(Sender<()>),
    Shutdown,
    /// Tests: exit at once, without flushing (what SIGKILL does).
    #[cfg(test)]
    Abort,
}

/// The handle workers credit through. Cheap to clone; every clone feeds the same thread.
#[derive(Clone)]
pub struct Ledger {
    tx: Sender<Msg>,
    stats: Arc<LedgerStats>,
    durable: Watermark,
    /// The webhook sender's URL, when a webhook runs.
    webhook_url: Option<Arc<std::sync::Mutex<String>>>,
}

/// The running ledger (and webhook) threads; [`LedgerThread::shutdown`] stops them.
/// Dropping it does the same.
pub struct LedgerThread {
    tx: Sender<Msg>,
    ledger: Option<JoinHandle<()>>,
    webhook: Option<(Sender<Signal>, JoinHandle<()>)>,
}

impl Ledger {
    /// [`Ledger::start_on`] the SQLite data directory `cfg.data_dir`, each thread with its own
    /// connection committing with [`Durability::Normal`].
    pub fn start(cfg: LedgerConfig) -> anyhow::Result<(Ledger, LedgerThread)> {
        let dir = cfg.data_dir.clone();
        let open = move || -> Result<Box<dyn Storage>, StoreError> {
            Ok(Box::new(SqliteStore::open_with(&dir, Durability::Normal)?))
        };
        Ledger::start_on(&cfg, open)
            .with_context(|| format!("starting the ledger on {}", cfg.data_dir.display()))
    }

    /// Loads the journaled progress of purchases still in a cart (dropping the rest) and spawns
    /// the ledger thread, plus the webhook sender when `cfg.webhook` is set (queued events are
    /// sent at once). `open` gives each thread its own storage handle.
    pub fn start_on(
        cfg: &LedgerConfig,
        open: impl Fn() -> Result<Box<dyn Storage>, StoreError>,
    ) -> anyhow::Result<(Ledger, LedgerThread)> {
        let store = open()?;
        let queued = store.outbox_len().context("reading the webhook outbox")?;
        let stats = Arc::new(LedgerStats::default());

        let webhook_url = cfg
            .webhook
            .clone()
            .map(|u| Arc::new(std::sync::Mutex::new(u)));
        let webhook = match &webhook_url {
            Some(url) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let handle =
                    webhook::spawn(open()?, url.clone(), cfg.webhook_timeout, rx, stats.clone())?;
                Some((tx, handle))
            }
            None => {
                if queued > 0 {
                    tracing::warn!(
                        queued,
                        "webhook events are queued but no webhook is configured; they wait"
                    );
                }
                None
            }
        };

        let mut state = State::new(
            store,
            webhook.as_ref().map(|(tx, _)| tx.clone()),
            stats.clone(),
        );
        let recovered = state.recover().context("loading journaled progress")?;
        state.dir = Some(cfg.data_dir.clone());
        state.replay_inflight();
        tracing::info!(
            recovered,
            webhook_queued = queued,
            "completion ledger started"
        );

        let durable = state.durable.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let interval = cfg.flush_interval.max(Duration::from_millis(1));
        let spawned = std::thread::Builder::new()
            .name("weir-ledger".into())
            .spawn(move || state.run(rx, interval));
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                if let Some((wtx, wh)) = webhook {
                    let _ = wtx.send(Signal::Stop);
                    let _ = wh.join();
                }
                return Err(e).context("spawning the ledger thread");
            }
        };
        Ok((
            Ledger {
                tx: tx.clone(),
                stats,
                durable,
                webhook_url,
            },
            LedgerThread {
                tx,
                ledger: Some(handle),
                webhook,
            },
        ))
    }

    /// Points the running webhook sender at `url` (SIGHUP): the next POST, queued events
    /// included, goes there. Refused when no webhook runs (turning it on or off needs a
    /// restart) or the URL is unusable.
    pub fn set_webhook_url(&self, url: &str) -> Result<(), String> {
        let Some(current) = &self.webhook_url else {
            return Err("no webhook runs (turning it on needs a restart)".into());
        };
        webhook::check_url(url).map_err(|e| format!("{e:#}"))?;
        *current.lock().unwrap_or_else(|e| e.into_inner()) = url.to_string();
        Ok(())
    }

    /// Hands delivered ranges to the ledger thread. Never blocks; a no-op once the ledger has
    /// stopped.
    pub fn credit(&self, batch: Vec<Credit>) {
        if !batch.is_empty() {
            let _ = self.tx.send(Msg::Credits(batch));
        }
    }

    /// Asks for a journal flush now, without waiting for it.
    pub fn flush(&self) {
        let _ = self.tx.send(Msg::Flush);
    }

    /// Waits until every credit sent before this call was applied, resulting completions were
    /// committed and the journal was flushed. False if that took longer than `timeout` or the
    /// ledger has stopped. Blocks: never call it from an I/O worker.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (ack, done) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Sync(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }

    /// How far the journal has caught up with the credits sent (for the workers' map files:
    /// see [`super::inflight`]).
    pub fn durable_watermark(&self) -> Watermark {
        self.durable.clone()
    }

    /// The ledger's counters.
    pub fn stats(&self) -> Arc<LedgerStats> {
        self.stats.clone()
    }
}

impl LedgerThread {
    /// Applies the credits already sent, flushes the journal, stops the ledger thread and the
    /// webhook sender (after its POST in flight, at most the webhook timeout) and joins them.
    pub fn shutdown(mut self) {
        self.stop(Msg::Shutdown);
    }

    /// Stops the ledger thread as SIGKILL would: nothing since the last flush is written.
    #[cfg(test)]
    fn kill(mut self) {
        self.stop(Msg::Abort);
    }

    fn stop(&mut self, msg: Msg) {
        if let Some(handle) = self.ledger.take() {
            let _ = self.tx.send(msg);
            if handle.join().is_err() {
                tracing::error!("the ledger thread panicked");
            }
        }
        if let Some((tx, handle)) = self.webhook.take() {
            let _ = tx.send(Signal::Stop);
            if handle.join().is_err() {
                tracing::error!("the webhook thread panicked");
            }
        }
    }
}

impl Drop for LedgerThread {
    fn drop(&mut self) {
        self.stop(Msg::Shutdown);
    }
}

type Key = (Arc<str>, Arc<str>);

/// The progress of one purchase.
struct Purchase {
    /// The cart row's `added_at` this progress belongs to.
    added_at: i64,
    /// Size of each part, in order.
    sizes: Arc<[u64]>,
    /// INVARIANT: one per part, each within `0..sizes[i]`.
    parts: Vec<IntervalSet>,
    /// Parts changed since the last flush.
    dirty: Vec<bool>,
    last_credit: Instant,
}

impl Purchase {
    fn new(added_at: i64, sizes: Arc<[u64]>) -> Purchase {
        let n = sizes.len();
        Purchase {
            added_at,
            sizes,
            parts: vec![IntervalSet::new(); n],
            dirty: vec![false; n],
            last_credit: Instant::now(),
        }
    }

    /// The only completion test: every byte of every part was credited.
    fn is_complete(&self) -> bool {
        self.parts.len() == self.sizes.len()
            && self
                .parts
                .iter()
                .zip(self.sizes.iter())
                .all(|(set, &size)| set.is_complete(size))
    }

    fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|&d| d)
    }
}

/// The ledger thread's state.
struct State {
    /// Item definitions, carts, the journal and completions.
    store: Box<dyn Storage>,
    webhook: Option<Sender<Signal>>,
    stats: Arc<LedgerStats>,
    /// Part sizes by item id (items are immutable once imported).
    items: HashMap<Arc<str>, Arc<[u64]>>,
    /// Purchases with progress in memory.
    open: HashMap<Key, Purchase>,
    /// Purchases with parts changed since the last flush.
    dirty: HashSet<Key>,
    /// Purchases found complete whose completion transaction failed; retried every flush.
    retry: HashSet<Key>,
    /// Where the pending evidence is kept (`None`: in memory only, for tests).
    dir: Option<PathBuf>,
    /// Spans written but not seen acknowledged when an earlier process died.
    evidence: Vec<Evidence>,
    /// `evidence` changed since it was last written.
    evidence_dirty: bool,
    /// Map files replayed but not yet removed (the journal could not be written then).
    stale_maps: Vec<PathBuf>,
    /// The journal is failing (disk full): logged once, then quiet until it recovers.
    failing: bool,
    /// Advanced after each flush that wrote every credit received before a moment the channel
    /// was empty.
    durable: Watermark,
}

/// How long a pending-evidence span waits for its resume.
const EVIDENCE_TTL_MS: i64 = 24 * 3600 * 1000;
/// The file (in the data directory's `inflight/`) holding pending evidence.
const EVIDENCE_FILE: &str = "evidence.json";

/// Content bytes weir had written to a connection but had not seen acknowledged when it died:
/// the client may hold `from..to`. A later credit for the same (user, item, part) whose range
/// starts at `n` with `from < n <= to` (a resume from what the client holds) proves the client
/// held `from..n`: that is credited too, and the span is used up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub user: String,
    pub item: String,
    pub part: u32,
    /// When the response that wrote the span started (Unix milliseconds): it proves bytes
    /// only for a purchase made no later. Spans saved before this field existed read as 0, so
    /// they prove nothing for any purchase.
    #[serde(default)]
    pub started_ms: i64,
    pub from: u64,
    pub to: u64,
    /// Unix milliseconds after which the span is dropped.
    pub expires_ms: i64,
    /// The dead process's socket that wrote the span, while the kernel may still be sending
    /// it (see [`super::orphans`]): looked up every flush until the socket is done.
    #[serde(default)]
    pub watch: Option<Watch>,
}

/// An orphaned socket still sending a pending span: how to map its acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watch {
    pub cookie: u64,
    /// The run's first content offset and the stream offset that carried it.
    pub start: u64,
    pub stream_at: u64,
    /// Unix milliseconds after which the socket is no longer looked up.
    pub until_ms: i64,
}

/// How long an orphaned socket that is still sending is looked up (the kernel gives up on an
/// orphan after `tcp_orphan_retries` back-offs, about two minutes at most by default).
const WATCH_MS: i64 = 150 * 1000;

impl Evidence {
    /// The range a credit starting at `n` proves, if it resumes inside this span.
    fn proves(&self, user: &str, item: &str, part: u32, n: u64) -> Option<Range<u64>> {
        (self.part == part
            && self.from < n
            && n <= self.to
            && self.item == item
            && self.user == user)
            .then_some(self.from..n)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What one round of messages touched.
#[derive(Default)]
struct Round {
    /// The cart's `added_at` per (user, item), read once per round.
    carts: HashMap<Key, Option<i64>>,
    /// Purchases that got a counted credit: check them for completion.
    touched: HashSet<Key>,
}

impl State {
    fn new(
        store: Box<dyn Storage>,
        webhook: Option<Sender<Signal>>,
        stats: Arc<LedgerStats>,
    ) -> State {
        State {
            store,
            webhook,
            stats,
            items: HashMap::new(),
            open: HashMap::new(),
            dirty: HashSet::new(),
            retry: HashSet::new(),
            dir: None,
            evidence: Vec::new(),
            evidence_dirty: false,
            stale_maps: Vec::new(),
            failing: false,
            durable: Watermark::default(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>, interval: Duration) {
        let mut next_flush = Instant::now() + interval;
        loop {
            let first = match rx.recv_deadline(next_flush) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            // When the channel was last seen empty: every credit sent before then is applied.
            let mut drained = first.is_none().then(inflight::clock_ns);
            let mut round = Round::default();
            let mut next = first;
            let mut handled = 0;
            while let Some(msg) = next {
                match msg {
                    Msg::Credits(batch) => self.apply(batch, &mut round),
                    Msg::Flush => {
                        self.finish(&mut round);
                        self.flush();
                    }
                    Msg::Sync(ack) => {
                        self.finish(&mut round);
                        self.flush();
                        let _ = ack.send(());
                    }
                    Msg::Shutdown => {
                        self.finish(&mut round);
                        if self.flush() {
                            if let Some(dir) = &self.dir {
                                inflight::remove_own(dir);
                            }
                        }
                        tracing::info!("completion ledger stopped");
                        return;
                    }
                    #[cfg(test)]
                    Msg::Abort => return,
                }
                handled += 1;
                next = if handled < MAX_ROUND {
                    let now = inflight::clock_ns();
                    let m = rx.try_recv().ok();
                    if m.is_none() {
                        drained = Some(now);
                    }
                    m
                } else {
                    None
                };
            }
            self.finish(&mut round);
            if Instant::now() >= next_flush {
                self.watch_orphans();
                if self.flush() {
                    if let Some(at) = drained {
                        self.durable.advance(at);
                    }
                }
                self.evict(EVICT_AFTER);
                next_flush = Instant::now() + interval;
            }
        }
    }

    /// Applies a batch of credits to the purchases they belong to.
    fn apply(&mut self, batch: Vec<Credit>, round: &mut Round) {
        let n = batch.len() as u64;
        LedgerStats::add(&self.stats.credits, n);
        let mut proven = Vec::new();
        for credit in batch {
            if !self.evidence.is_empty() {
                self.use_evidence(&credit, &mut proven);
            }
            self.apply_one(credit, round);
        }
        for credit in proven {
            self.apply_one(credit, round);
        }
    }

    /// A credit starting inside a pending-evidence span of the same user, item and part proves
    /// the span's bytes before it: pushes them to `proven` and uses the span up.
    fn use_evidence(&mut self, credit: &Credit, proven: &mut Vec<Credit>) {
        let before = self.evidence.len();
        self.evidence.retain(|e| {
            match e.proves(&credit.user, &credit.item, credit.part, credit.range.start) {
                Some(range) => {
                    LedgerStats::add(&self.stats.evidence_credited, range.end - range.start);
                    tracing::info!(user = %e.user, item = %e.item, part = e.part, from = range.start, to = range.end,
                        "a resume inside a span written before a crash proves the client held it");
                    // It counts as a credit of the response that wrote it: for its purchase only.
                    proven.push(Credit {
                        user: credit.user.clone(),
                        item: credit.item.clone(),
                        part: credit.part,
                        started_ms: e.started_ms,
                        range,
                    });
                    false
                }
                None => true,
            }
        });
        if self.evidence.len() != before {
            self.evidence_dirty = true;
            self.stats.evidence_pending.store(
                self.evidence.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Applies one credit to the purchase it belongs to.
    fn apply_one(&mut self, credit: Credit, round: &mut Round) {
        {
            let key: Key = (credit.user, credit.item);
            let added_at = match round.carts.get(&key) {
                Some(&a) => a,
                None => {
                    let a = self.cart_added_at(&key);
                    round.carts.insert(key.clone(), a);
                    a
                }
            };
            let Some(added_at) = added_at else {
                self.forget(&key);
                LedgerStats::add(&self.stats.credits_ignored, 1);
                return;
            };
            if credit.started_ms < added_at {
                // Earned for an earlier purchase of the item (its response started before this
                // one was made): it counts for no purchase, and this one's progress stays.
                tracing::debug!(user = %key.0, item = %key.1, started_ms = credit.started_ms, added_at,
                    "credit of a response started before the purchase; ignored");
                LedgerStats::add(&self.stats.credits_ignored, 1);
                return;
            }
            let part = credit.part as usize;
            let credited = self.purchase(&key, added_at).and_then(|purchase| {
                let size = *purchase.sizes.get(part)?;
                let range = credit.range.start.min(size)..credit.range.end.min(size);
                let added = purchase.parts[part].insert(range.clone());
                purchase.last_credit = Instant::now();
                purchase.dirty[part] |= added > 0;
                Some((range.end.saturating_sub(range.start), added))
            });
            let Some((len, added)) = credited else {
                tracing::debug!(user = %key.0, item = %key.1, part, "credit for an unknown item or part");
                LedgerStats::add(&self.stats.credits_ignored, 1);
                return;
            };
            if added > 0 {
                self.dirty.insert(key.clone());
            }
            LedgerStats::add(&self.stats.bytes_credited, len);
            LedgerStats::add(&self.stats.bytes_new, added);
            round.touched.insert(key);
        }
    }

    /// Ends a round: completes the purchases it made whole.
    fn finish(&mut self, round: &mut Round) {
        round.carts.clear();
        for key in std::mem::take(&mut round.touched) {
            if self.open.get(&key).is_some_and(Purchase::is_complete) {
                self.complete(&key);
            }
        }
    }

    /// The `added_at` of the cart row (user, item), if the item is in the cart. A database
    /// error counts as "not in the cart" for this round: the credit is lost, never misapplied.
    fn cart_added_at(&self, key: &Key) -> Option<i64> {
        self.store
            .cart_added_at(&key.0, &key.1)
            .unwrap_or_else(|e| {
                tracing::error!(user = %key.0, item = %key.1, error = %e, "reading the cart");
                None
            })
    }

    /// Part sizes of an item, from the cache or the store.
    fn sizes(&mut self, item: &Arc<str>) -> Option<Arc<[u64]>> {
        if let Some(s) = self.items.get(item) {
            return Some(s.clone());
        }
        match self.store.item(item) {
            Ok(Some(def)) => {
                let sizes: Arc<[u64]> = def.parts.iter().map(|p| p.size).collect();
                self.items.insert(item.clone(), sizes.clone());
                Some(sizes)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(item = %item, error = %e, "reading the item definition");
                None
            }
        }
    }

    /// The in-memory progress of purchase (key, added_at): kept if it matches, else the old
    /// progress is discarded and the journal's is loaded.
    fn purchase(&mut self, key: &Key, added_at: i64) -> Option<&mut Purchase> {
        if self.open.get(key).is_some_and(|p| p.added_at != added_at) {
            self.forget(key);
        }
        if !self.open.contains_key(key) {
            let sizes = self.sizes(&key.1)?;
            let purchase = self.load(key, added_at, sizes);
            self.open.insert(key.clone(), purchase);
        }
        self.open.get_mut(key)
    }

    /// Reads a purchase's progress from the journal. Rows of another purchase, or that do not
    /// fit the item, are deleted; the rest is kept.
    fn load(&mut self, key: &Key, added_at: i64, sizes: Arc<[u64]>) -> Purchase {
        let mut purchase = Purchase::new(added_at, sizes);
        let rows = match self.store.progress(&key.0, &key.1) {
            Ok(rows) => rows,
            Err(e) => {
                // Starting from nothing is safe: it can only delay a completion.
                tracing::error!(user = %key.0, item = %key.1, error = %e, "reading progress");
                return purchase;
            }
        };
        let mut rejected = false;
        for row in rows {
            let fits = usize::try_from(row.part)
                .ok()
                .filter(|&p| row.cart_added_at == added_at && p < purchase.parts.len());
            match (fits, row.intervals) {
                (Some(p), Some(set)) if set.iter().all(|r| r.end <= purchase.sizes[p]) => {
                    purchase.parts[p] = set;
                }
                _ => rejected = true,
            }
        }
        if rejected {
            // Rewrite what was kept at the next flush, after deleting everything now.
            self.delete_progress(key);
            for (p, set) in purchase.parts.iter().enumerate() {
                purchase.dirty[p] = !set.is_empty();
            }
            if purchase.is_dirty() {
                self.dirty.insert(key.clone());
            }
        }
        purchase
    }

    /// Drops a purchase that ended (left the cart, or replaced by a new purchase).
    fn forget(&mut self, key: &Key) {
        self.retry.remove(key);
        self.dirty.remove(key);
        if self.open.remove(key).is_some() {
            self.delete_progress(key);
        }
    }

    fn delete_progress(&self, key: &Key) {
        if let Err(e) = self.store.delete_progress(&key.0, &key.1) {
            // Harmless: rows of another purchase are ignored (and deleted) when read.
            tracing::warn!(user = %key.0, item = %key.1, error = %e, "deleting old progress");
        }
    }

    /// Records the completion of a purchase whose every byte was credited.
    fn complete(&mut self, key: &Key) {
        let Some(purchase) = self.open.get(key) else {
            return;
        };
        if !purchase.is_complete() {
            debug_assert!(false, "complete() called on an incomplete purchase");
            return;
        }
        let completion = Completion {
            user: &key.0,
            item: &key.1,
            cart_added_at: purchase.added_at,
            size: purchase.sizes.iter().sum::<u64>(),
            parts: purchase.sizes.len(),
            notify: self.webhook.is_some(),
        };
        match self.store.commit_completion(&completion) {
            Ok(Some(Completed {
                history_id,
                completed_at_ms,
            })) => {
                LedgerStats::add(&self.stats.completions, 1);
                self.open.remove(key);
                self.dirty.remove(key);
                self.retry.remove(key);
                if let Some(w) = &self.webhook {
                    let _ = w.send(Signal::Wake);
                }
                tracing::info!(user = %key.0, item = %key.1, history_id, completed_at_ms, "download completed");
            }
            Ok(None) => {
                self.open.remove(key);
                self.dirty.remove(key);
                self.retry.remove(key);
                tracing::info!(user = %key.0, item = %key.1, "purchase left the cart before completing");
            }
            Err(e) => {
                self.retry.insert(key.clone());
                self.journal_failed(&format!(
                    "recording a completion of {} by {}: {e}",
                    key.1, key.0
                ));
            }
        }
    }

    /// Writes every changed part in one transaction, retries failed completions, and writes
    /// the pending evidence if it changed. A failing journal (disk full) is logged once, when it
    /// starts failing, and once when it recovers; meanwhile everything waits in memory.
    fn flush(&mut self) -> bool {
        for key in self.retry.clone() {
            self.complete(&key);
        }
        let mut ok = self.retry.is_empty();
        if !self.dirty.is_empty() {
            match self.write_dirty() {
                Ok(rows) => {
                    for key in self.dirty.drain() {
                        if let Some(p) = self.open.get_mut(&key) {
                            p.dirty.iter_mut().for_each(|d| *d = false);
                        }
                    }
                    tracing::trace!(rows, "progress flushed");
                }
                Err(e) => {
                    ok = false;
                    self.journal_failed(&e.to_string());
                }
            }
        }
        if self.evidence_dirty {
            match self.save_evidence() {
                Ok(()) => self.evidence_dirty = false,
                Err(e) => {
                    ok = false;
                    self.journal_failed(&format!("writing pending evidence: {e}"));
                }
            }
        }
        if ok {
            if self.failing {
                self.failing = false;
                self.stats
                    .journal_failing
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("the journal is writable again: progress and completions kept in memory are written");
            }
            if !self.stale_maps.is_empty() {
                super::inflight::remove(&std::mem::take(&mut self.stale_maps));
            }
        }
        ok
    }

    /// Counts a failed journal write, and logs the first of a series.
    fn journal_failed(&mut self, error: &str) {
        LedgerStats::add(&self.stats.journal_errors, 1);
        if !self.failing {
            self.failing = true;
            self.stats
                .journal_failing
                .store(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error, "the journal cannot be written (disk full?): serving goes on; progress and completions are kept in memory and retried every flush until it can");
        }
    }

    /// Writes the pending evidence (atomically: a temporary file, fsynced, renamed).
    fn save_evidence(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let dir = dir.join(super::inflight::DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(EVIDENCE_FILE);
        if self.evidence.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = dir.join(format!("{EVIDENCE_FILE}.tmp"));
        let bytes = serde_json::to_vec(&self.evidence).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Reads the pending evidence left by earlier processes, dropping expired spans.
    fn load_evidence(&mut self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(super::inflight::DIR).join(EVIDENCE_FILE);
        let spans: Vec<Evidence> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, file = %path.display(), "unreadable pending evidence; ignored");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let now = now_ms();
        let before = spans.len();
        self.evidence = spans.into_iter().filter(|e| e.expires_ms > now).collect();
        self.evidence_dirty |= self.evidence.len() != before;
    }

    /// On start, after the journal: replays the map files a killed process left (see
    /// [`super::inflight`]). What they had credited is credited again (idempotent); what they had
    /// written beyond it becomes pending evidence. The files are removed once all of it is
    /// journaled.
    fn replay_inflight(&mut self) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        self.load_evidence();
        let (files, records) = match super::inflight::recover(&dir) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "reading the map files of an earlier process");
                return;
            }
        };
        let now = now_ms();
        let expires_ms = now + EVIDENCE_TTL_MS;
        // The kernel may have gone on sending what the dead process wrote: ask it how far each
        // orphaned socket was acknowledged.
        let cookies: HashSet<u64> = records
            .iter()
            .filter(|r| r.written > r.credited)
            .filter_map(|r| r.origin.map(|o| o.cookie))
            .collect();
        let fates = super::orphans::lookup(&cookies).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot ask the kernel about the dead process's sockets (sock_diag)");
            HashMap::new()
        });
        let mut batch = Vec::new();
        let (mut replayed, mut orphaned) = (0, 0);
        // Runs with unacknowledged bytes: whose socket the kernel still knew, and whose it did
        // not (reset, or recorded without a cookie).
        let (mut sockets_found, mut sockets_gone) = (0, 0);
        for r in records {
            let (user, item): (Arc<str>, Arc<str>) =
                (r.user.as_str().into(), r.item.as_str().into());
            let fate = r.origin.and_then(|o| Some((o, *fates.get(&o.cookie)?)));
            if r.written > r.credited {
                if fate.is_some() {
                    sockets_found += 1;
                } else {
                    sockets_gone += 1;
                }
            }
            let acked = fate.map_or(r.credited, |(o, f)| {
                f.content_acked(r.start, o.stream_at, r.written)
                    .max(r.credited)
            });
            if acked > r.start {
                replayed += r.credited - r.start;
                orphaned += acked - r.credited;
                batch.push(Credit {
                    user: user.clone(),
                    item: item.clone(),
                    part: r.part,
                    started_ms: r.started_ms,
                    range: r.start..acked,
                });
            }
            if r.written > acked {
                self.evidence_dirty = true;
                self.evidence.push(Evidence {
                    user: r.user,
                    item: r.item,
                    part: r.part,
                    started_ms: r.started_ms,
                    from: acked,
                    to: r.written,
                    expires_ms,
                    watch: fate.filter(|(_, f)| !f.is_final()).map(|(o, _)| Watch {
                        cookie: o.cookie,
                        start: r.start,
                        stream_at: o.stream_at,
                        until_ms: now + WATCH_MS,
                    }),
                });
            }
        }
        LedgerStats::add(&self.stats.orphan_credited, orphaned);
        let mut round = Round::default();
        self.apply(batch, &mut round);
        self.finish(&mut round);
        LedgerStats::add(&self.stats.inflight_replayed, replayed);
        self.stats.evidence_pending.store(
            self.evidence.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !files.is_empty() {
            tracing::info!(
                files = files.len(),
                replayed_bytes = replayed,
                acknowledged_after_death_bytes = orphaned,
                sockets_found,
                sockets_gone,
                pending_evidence = self.evidence.len(),
                "replayed the credits of a process that did not exit cleanly"
            );
        }
        self.stale_maps = files;
        self.flush();
    }

    /// Looks up the orphaned sockets that were still sending pending spans: what their clients
    /// acknowledged since is credited, and a socket that is done (all acknowledged, gone, or
    /// watched long enough) is no longer looked up.
    fn watch_orphans(&mut self) {
        let now = now_ms();
        let cookies: HashSet<u64> = self
            .evidence
            .iter()
            .filter_map(|e| e.watch.filter(|w| w.until_ms > now).map(|w| w.cookie))
            .collect();
        if cookies.is_empty() && self.evidence.iter().all(|e| e.watch.is_none()) {
            return;
        }
        let fates = match super::orphans::lookup(&cookies) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the kernel about the dead process's sockets (sock_diag)");
                HashMap::new()
            }
        };
        let mut batch = Vec::new();
        let mut orphaned = 0;
        let mut changed = false;
        for e in &mut self.evidence {
            let Some(w) = e.watch else {
                continue;
            };
            let fate = fates.get(&w.cookie).copied().filter(|_| w.until_ms > now);
            if let Some(f) = fate {
                let acked = f.content_acked(w.start, w.stream_at, e.to);
                if acked > e.from {
                    orphaned += acked - e.from;
                    batch.push(Credit {
                        user: e.user.as_str().into(),
                        item: e.item.as_str().into(),
                        part: e.part,
                        started_ms: e.started_ms,
                        range: e.from..acked,
                    });
                    e.from = acked;
                    changed = true;
                }
            }
            if fate.is_none_or(|f| f.is_final()) || e.from >= e.to {
                e.watch = None;
                changed = true;
            }
        }
        if !changed {
            // Nothing moved: no rewrite (and fsync) of the evidence file this flush.
            return;
        }
        self.evidence.retain(|e| e.from < e.to);
        self.evidence_dirty = true;
        self.stats.evidence_pending.store(
            self.evidence.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !batch.is_empty() {
            LedgerStats::add(&self.stats.orphan_credited, orphaned);
            tracing::info!(
                bytes = orphaned,
                "clients acknowledged what a killed process had written (orphaned sockets)"
            );
            let mut round = Round::default();
            self.apply(batch, &mut round);
            self.finish(&mut round);
        }
    }

    fn write_dirty(&mut self) -> Result<usize, StoreError> {
        let mut rows = Vec::new();
        for key in &self.dirty {
            let Some(p) = self.open.get(key) else {
                continue;
            };
            for (part, set) in p.parts.iter().enumerate() {
                if p.dirty[part] {
                    rows.push(ProgressWrite {
                        user: &key.0,
                        item: &key.1,
                        cart_added_at: p.added_at,
                        part: part as u32,
                        intervals: set,
                    });
                }
            }
        }
        self.store.save_progress(&rows)
    }

    /// Drops purchases flushed and idle for `idle` from memory.
    fn evict(&mut self, idle: Duration) {
        let dirty = &self.dirty;
        let retry = &self.retry;
        self.open.retain(|key, p| {
            p.last_credit.elapsed() < idle || dirty.contains(key) || retry.contains(key)
        });
    }

    /// On start: deletes progress of purchases no longer in a cart, loads the rest, and
    /// completes any that are whole. Returns the number of purchases loaded.
    fn recover(&mut self) -> Result<usize, StoreError> {
        let stale = self.store.delete_ended_progress()?;
        if stale > 0 {
            tracing::info!(
                rows = stale,
                "dropped progress of purchases no longer in a cart"
            );
        }
        let purchases = self.store.journaled_purchases()?;
        let mut loaded = 0;
        for (user, item, added_at) in purchases {
            let key: Key = (user.into(), item.into());
            if self.purchase(&key, added_at).is_some() {
                loaded += 1;
                if self.open.get(&key).is_some_and(Purchase::is_complete) {
                    self.complete(&key);
                }
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::zip::{ZipEntry, ZipLayout};
    use crate::storage::{now_ms, Blob, ItemKind, Store};
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    /// Deadline of every bounded wait in these tests.
    const WAIT: Duration = Duration::from_secs(30);

    struct Fixture {
        _tmp: tempfile::TempDir,
        store: Store,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(&tmp.path().join("data")).unwrap();
            store.add_user("alice", "h", None).unwrap();
            store.add_user("bob", "h", None).unwrap();
            Fixture { _tmp: tmp, store }
        }

        fn blob(&self, name: &str, len: usize) -> Blob {
            let src = self.store.data_dir().join(name);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
            std::fs::write(&src, bytes).unwrap();
            let b = crate::catalog::import_file(&self.store.content_dir(), &src).unwrap();
            std::fs::remove_file(src).unwrap();
            b
        }

        fn file(&self, id: &str, len: usize) {
            let b = self.blob(&format!("{id}.bin"), len);
            self.store.add_item(id, ItemKind::File, &[b]).unwrap();
        }

        fn album(&self, id: &str, lens: &[usize]) -> Vec<Blob> {
            let parts: Vec<Blob> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| self.blob(&format!("{id}-{i:02}.flac"), len))
                .collect();
            self.store.add_item(id, ItemKind::Album, &parts).unwrap();
            parts
        }

        /// Flushes happen only when a test asks (or on shutdown).
        fn config(&self) -> LedgerConfig {
            LedgerConfig {
                flush_interval: Duration::from_secs(3600),
                ..LedgerConfig::new(self.store.data_dir())
            }
        }

        fn start(&self) -> (Ledger, LedgerThread) {
            Ledger::start(self.config()).unwrap()
        }

        fn completions(&self, user: &str, item: &str) -> usize {
            self.store
                .history_list(user)
                .unwrap()
                .iter()
                .filter(|h| h.item == item)
                .count()
        }

        fn events(&self, user: &str, item: &str) -> i64 {
            self.store.test_completed_events(user, item)
        }

        fn progress_rows(&self) -> i64 {
            self.store.test_progress_rows()
        }

        fn outbox(&self) -> u64 {
            self.store.outbox_len().unwrap()
        }

        fn history_id(&self, user: &str, item: &str) -> i64 {
            self.store.test_history_id(user, item)
        }
    }

    /// A credit of a response started now.
    fn credit(user: &str, item: &str, part: u32, range: Range<u64>) -> Credit {
        credit_at(user, item, part, range, now_ms() as i64)
    }

    /// A credit of a response started at `started_ms`.
    fn credit_at(user: &str, item: &str, part: u32, range: Range<u64>, started_ms: i64) -> Credit {
        Credit {
            user: user.into(),
            item: item.into(),
            part,
            started_ms,
            range,
        }
    }

    fn sync(ledger: &Ledger) {
        assert!(ledger.sync(WAIT), "the ledger did not answer");
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn file_completes_exactly_once_from_many_connections() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        f.store.cart_add("bob", "movie").unwrap();
        let (ledger, thread) = f.start();

        // Partial, plus the missing bytes delivered to someone else: not complete.
        ledger.credit(vec![
            credit("alice", "movie", 0, 0..4000),
            credit("alice", "movie", 0, 6000..10_000),
            credit("bob", "movie", 0, 4000..6000),
        ]);
        ledger.credit(Vec::new()); // an empty batch is not even sent
        sync(&ledger);
        assert!(f.store.cart_contains("alice", "movie").unwrap());
        assert_eq!(f.completions("alice", "movie"), 0);
        assert_eq!(f.progress_rows(), 2, "one part each for alice and bob");

        // Overlapping ranges, shuffled, from 8 "connections" at once.
        let mut ranges: Vec<Range<u64>> = (0..10_000u64)
            .step_by(100)
            .map(|s| s..(s + 150).min(10_000))
            .collect();
        ranges.shuffle(&mut StdRng::seed_from_u64(7));
        let workers: Vec<_> = ranges
            .chunks(13)
            .map(|chunk| {
                let ledger = ledger.clone();
                let chunk = chunk.to_vec();
                std::thread::spawn(move || {
                    for batch in chunk.chunks(4) {
                        ledger.credit(
                            batch
                                .iter()
                                .map(|r| credit("alice", "movie", 0, r.clone()))
                                .collect(),
                        );
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        sync(&ledger);

        assert!(!f.store.cart_contains("alice", "movie").unwrap());
        assert_eq!(f.completions("alice", "movie"), 1);
        assert_eq!(f.events("alice", "movie"), 1);
        assert_eq!(f.progress_rows(), 1, "only bob's progress is left");
        assert_eq!(f.outbox(), 0, "no webhook configured");
        assert!(f.store.cart_contains("bob", "movie").unwrap());
        assert_eq!(f.completions("bob", "movie"), 0);
        let stats = ledger.stats();
        assert_eq!(stats.completions.load(Ordering::Relaxed), 1);

        // More credits after completion (the grace period) change nothing.
        let ignored = stats.credits_ignored.load(Ordering::Relaxed);
        ledger.credit(vec![credit("alice", "movie", 0, 0..10_000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 1);
        assert_eq!(f.events("alice", "movie"), 1);
        assert_eq!(stats.completions.load(Ordering::Relaxed), 1);
        assert_eq!(stats.credits_ignored.load(Ordering::Relaxed), ignored + 1);

        // The grace period check.
        assert!(f.store.recently_completed("alice", "movie", 0).unwrap());
        assert!(!f
            .store
            .recently_completed("alice", "movie", now_ms() + 60_000)
            .unwrap());
        assert!(!f.store.recently_completed("bob", "movie", 0).unwrap());
        thread.shutdown();
    }

    #[test]
    fn album_completes_from_zip_ranges_and_tracks() {
        let f = Fixture::new();
        let parts = f.album("album", &[3000, 1, 5000]);
        f.store.cart_add("alice", "album").unwrap();
        let layout = ZipLayout::new(
            &parts
                .iter()
                .map(|p| ZipEntry {
                    name: p.name.clone(),
                    size: p.size,
                    crc32: p.crc32,
                    mtime_unix: p.mtime,
                })
                .collect::<Vec<_>>(),
        );
        let zip = |range: Range<u64>| -> Vec<Credit> {
            layout
                .track_intervals(range)
                .into_iter()
                .map(|(t, r)| credit("alice", "album", t as u32, r))
                .collect()
        };
        let (ledger, thread) = f.start();

        // The zip from its start to the middle of track 3 (headers included): tracks 1 and 2.
        let half3 = layout.track_range(2).unwrap().start + 2500;
        ledger.credit(zip(0..half3));
        // A part the album does not have counts for nothing.
        ledger.credit(vec![credit("alice", "album", 3, 0..5000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "album"), 0);
        assert_eq!(ledger.stats().credits_ignored.load(Ordering::Relaxed), 1);

        // Track 3 directly, all but its last byte; then the zip's tail (central directory
        // and that byte).
        ledger.credit(vec![credit("alice", "album", 2, 2000..4999)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "album"), 0);
        let tail = layout.track_range(2).unwrap().end - 1..layout.len();
        assert_eq!(zip(tail.clone()).len(), 1);
        ledger.credit(zip(tail));
        sync(&ledger);
        assert_eq!(f.completions("alice", "album"), 1);
        assert_eq!(f.events("alice", "album"), 1);
        assert!(!f.store.cart_contains("alice", "album").unwrap());
        thread.shutdown();
    }

    #[test]
    fn credits_outside_the_cart_never_count() {
        let f = Fixture::new();
        f.file("doc", 100);
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "doc", 0, 0..100)]);
        ledger.credit(vec![credit("alice", "nonexistent", 0, 0..100)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "doc"), 0);
        assert_eq!(f.progress_rows(), 0);
        assert_eq!(ledger.stats().credits_ignored.load(Ordering::Relaxed), 2);

        // Bought now: the earlier delivery does not count toward it.
        f.store.cart_add("alice", "doc").unwrap();
        ledger.credit(vec![credit("alice", "doc", 0, 0..99)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "doc"), 0);
        // A range past the end is clipped to the item.
        ledger.credit(vec![credit("alice", "doc", 0, 99..1_000_000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "doc"), 1);
        assert_eq!(ledger.stats().bytes_new.load(Ordering::Relaxed), 100);
        thread.shutdown();
    }

    #[test]
    fn progress_survives_a_kill_up_to_the_last_flush() {
        let f = Fixture::new();
        f.file("big", 1000);
        f.store.cart_add("alice", "big").unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "big", 0, 0..500)]);
        sync(&ledger); // flushed
        ledger.credit(vec![credit("alice", "big", 0, 500..750)]);
        thread.kill(); // never flushed: lost, like SIGKILL
        drop(ledger);

        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "big", 0, 750..1000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "big"), 0, "500..750 was lost");
        ledger.credit(vec![credit("alice", "big", 0, 500..750)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "big"), 1, "0..500 was recovered");
        thread.kill();
        drop(ledger);

        // After another restart the completion is not repeated.
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "big", 0, 0..1000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "big"), 1);
        assert_eq!(f.events("alice", "big"), 1);
        assert_eq!(ledger.stats().completions.load(Ordering::Relaxed), 0);
        thread.shutdown();
    }

    #[test]
    fn shutdown_flushes_progress() {
        let f = Fixture::new();
        f.file("big", 1000);
        f.store.cart_add("alice", "big").unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "big", 0, 0..600)]);
        thread.shutdown();
        assert_eq!(f.progress_rows(), 1);

        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "big", 0, 600..1000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "big"), 1);
        assert_eq!(f.progress_rows(), 0);
        thread.shutdown();
    }

    #[test]
    fn the_periodic_flush_runs_by_itself() {
        let f = Fixture::new();
        f.file("big", 1000);
        f.store.cart_add("alice", "big").unwrap();
        let cfg = LedgerConfig {
            flush_interval: Duration::from_millis(20),
            ..LedgerConfig::new(f.store.data_dir())
        };
        let (ledger, thread) = Ledger::start(cfg).unwrap();
        ledger.credit(vec![credit("alice", "big", 0, 0..10)]);
        wait_until("the timed flush", || f.progress_rows() == 1);
        thread.kill();
    }

    #[test]
    fn a_new_purchase_needs_every_byte_again() {
        let f = Fixture::new();
        f.file("song", 400);
        f.store.cart_add("alice", "song").unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "song", 0, 0..400)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 1);

        // Bought again after completion.
        f.store.cart_add("alice", "song").unwrap();
        ledger.credit(vec![credit("alice", "song", 0, 0..200)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 1);
        assert!(f.store.cart_contains("alice", "song").unwrap());
        ledger.credit(vec![credit("alice", "song", 0, 200..400)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 2);
        assert_eq!(f.events("alice", "song"), 2);

        // Re-purchased mid-download (the cart row's added_at changed): old progress is gone.
        f.store.cart_add("alice", "song").unwrap();
        ledger.credit(vec![credit("alice", "song", 0, 0..200)]);
        sync(&ledger);
        f.store.test_rebuy("alice", "song");
        let rebought = f.store.cart_added_at("alice", "song").unwrap().unwrap();
        ledger.credit(vec![credit_at("alice", "song", 0, 200..400, rebought)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 2);
        assert_eq!(f.progress_rows(), 1);

        // Removed from the cart mid-download: progress is dropped and credits are ignored.
        assert!(f.store.cart_remove("alice", "song").unwrap());
        ledger.credit(vec![credit("alice", "song", 0, 0..200)]);
        sync(&ledger);
        assert_eq!(f.progress_rows(), 0);
        f.store.cart_add("alice", "song").unwrap();
        ledger.credit(vec![credit("alice", "song", 0, 200..400)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 2);
        ledger.credit(vec![credit("alice", "song", 0, 0..200)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 3);
        thread.shutdown();
    }

    #[test]
    fn restart_drops_progress_of_ended_purchases() {
        let f = Fixture::new();
        f.file("a", 100);
        f.file("b", 100);
        f.store.cart_add("alice", "a").unwrap();
        f.store.cart_add("alice", "b").unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![
            credit("alice", "a", 0, 0..50),
            credit("alice", "b", 0, 0..50),
        ]);
        sync(&ledger);
        thread.kill();
        drop(ledger);
        assert_eq!(f.progress_rows(), 2);

        f.store.cart_remove("alice", "a").unwrap();
        let (ledger, thread) = f.start();
        assert_eq!(f.progress_rows(), 1, "a's progress is dropped, b's kept");
        ledger.credit(vec![credit("alice", "b", 0, 50..100)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "b"), 1);
        thread.shutdown();
    }

    /// The ledger's state driven directly, without its thread.
    fn state(f: &Fixture) -> State {
        let store = SqliteStore::open_with(f.store.data_dir(), Durability::Normal).unwrap();
        State::new(Box::new(store), None, Arc::default())
    }

    fn apply(state: &mut State, credits: Vec<Credit>) {
        let mut round = Round::default();
        state.apply(credits, &mut round);
        state.finish(&mut round);
    }

    #[test]
    fn evicted_progress_is_reloaded_from_the_journal() {
        let f = Fixture::new();
        f.file("big", 1000);
        f.store.cart_add("alice", "big").unwrap();
        let mut state = state(&f);
        apply(&mut state, vec![credit("alice", "big", 0, 0..600)]);
        state.evict(Duration::ZERO);
        assert_eq!(state.open.len(), 1, "unflushed progress stays in memory");
        state.flush();
        state.evict(Duration::ZERO);
        assert!(state.open.is_empty());
        apply(&mut state, vec![credit("alice", "big", 0, 600..1000)]);
        assert_eq!(f.completions("alice", "big"), 1);
    }

    /// A map file as a killed process leaves it: one run of `user`'s `item`, credited and
    /// written up to the given offsets.
    fn killed_process_file(f: &Fixture, user: &str, item: &str, credited: u64, written: u64) {
        killed_process_file_at(f, user, item, credited, written, now_ms() as i64);
    }

    /// [`killed_process_file`] of a response started at `started_ms`.
    fn killed_process_file_at(
        f: &Fixture,
        user: &str,
        item: &str,
        credited: u64,
        written: u64,
        started_ms: i64,
    ) {
        let file =
            crate::completion::InflightFile::create(f.store.data_dir(), 0, 4, Default::default())
                .unwrap();
        let slot = file.claim(user, item, 0, started_ms, 0, None).unwrap();
        file.set_written(slot, written);
        file.set_credited(slot, credited);
        let dir = f.store.data_dir().join(crate::completion::inflight::DIR);
        std::fs::copy(file.path(), dir.join(format!("1-0-{user}.map"))).unwrap();
        drop(file); // the copy is "left behind" by another process
    }

    #[test]
    fn a_restart_replays_credits_and_a_resume_inside_the_written_span_proves_the_rest() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        f.store.cart_add("bob", "movie").unwrap();
        // Killed with 0..4000 credited (never journaled) and 4000..7000 written, unacknowledged.
        killed_process_file(&f, "alice", "movie", 4000, 7000);
        killed_process_file(&f, "bob", "movie", 4000, 7000);
        let (ledger, thread) = f.start();
        sync(&ledger);
        assert_eq!(
            ledger.stats().inflight_replayed.load(Ordering::Relaxed),
            8000
        );
        assert_eq!(ledger.stats().evidence_pending.load(Ordering::Relaxed), 2);
        // The map files are gone once journaled; the evidence is on disk.
        thread.kill();
        let (ledger, thread) = f.start();
        assert_eq!(ledger.stats().inflight_replayed.load(Ordering::Relaxed), 0);
        assert_eq!(ledger.stats().evidence_pending.load(Ordering::Relaxed), 2);

        // Alice resumes from 5500 (what she holds): 4000..5500 is proven, the rest delivered.
        ledger.credit(vec![credit("alice", "movie", 0, 5500..10_000)]);
        // Bob asks for 7001.. (outside the span: proves nothing), and another user's resume
        // never proves anything for him.
        ledger.credit(vec![credit("bob", "movie", 0, 7001..10_000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 1);
        assert_eq!(f.completions("bob", "movie"), 0);
        assert_eq!(
            ledger.stats().evidence_credited.load(Ordering::Relaxed),
            1500
        );
        // The span is used up: the same resume again changes nothing, and bob's is still there.
        assert_eq!(ledger.stats().evidence_pending.load(Ordering::Relaxed), 1);
        ledger.credit(vec![credit("bob", "movie", 0, 6000..7001)]);
        sync(&ledger);
        assert_eq!(f.completions("bob", "movie"), 1);
        thread.shutdown();
    }

    /// The kernel went on sending what the killed process had written, and the client
    /// acknowledged all of it (and the FIN): the orphaned socket's TIME-WAIT entry says so, and
    /// the item completes with no request from the client. A second run whose socket is gone
    /// (reset) stays evidence.
    #[test]
    fn a_restart_credits_what_the_orphaned_socket_saw_acknowledged() {
        use std::io::{Read, Write};
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        f.store.cart_add("bob", "movie").unwrap();
        // A connection that carried a 300-byte head then 0..10000; 4000 credited when "killed".
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let cookie = socket2::SockRef::from(&server).cookie().unwrap();
        let file =
            crate::completion::InflightFile::create(f.store.data_dir(), 0, 4, Default::default())
                .unwrap();
        let origin = crate::completion::inflight::Origin {
            cookie,
            stream_at: 300,
        };
        let started = now_ms() as i64;
        let slot = file
            .claim("alice", "movie", 0, started, 0, Some(origin))
            .unwrap();
        server.write_all(&vec![b'h'; 300]).unwrap();
        server.write_all(&vec![b'x'; 10_000]).unwrap();
        file.set_written(slot, 10_000);
        file.set_credited(slot, 4000);
        // Bob's socket no longer exists (a cookie no socket has): his span stays evidence.
        let gone = crate::completion::inflight::Origin {
            cookie: cookie ^ 0x5555_0000_0000,
            stream_at: 0,
        };
        let bob = file
            .claim("bob", "movie", 0, started, 0, Some(gone))
            .unwrap();
        file.set_written(bob, 10_000);
        let dir = f.store.data_dir().join(crate::completion::inflight::DIR);
        std::fs::copy(file.path(), dir.join("1-0-killed.map")).unwrap();
        drop(file);
        // The process "dies": its socket is closed and the kernel delivers the rest.
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 10_300);
        // Wait until the kernel has processed the client's ACK of the FIN.
        let want = std::collections::HashSet::from([cookie]);
        while crate::completion::orphans::lookup(&want)
            .unwrap()
            .get(&cookie)
            != Some(&crate::completion::orphans::Fate::AllAcked)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (ledger, thread) = f.start();
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 1);
        assert_eq!(ledger.stats().orphan_credited.load(Ordering::Relaxed), 6000);
        assert_eq!(f.completions("bob", "movie"), 0);
        assert_eq!(ledger.stats().evidence_pending.load(Ordering::Relaxed), 1);
        drop(client);
        thread.shutdown();
    }

    #[test]
    fn an_aborted_download_never_resumed_never_completes_across_a_kill() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        // Everything written, most of it unacknowledged, then the process died.
        killed_process_file(&f, "alice", "movie", 3000, 10_000);
        let (ledger, thread) = f.start();
        sync(&ledger);
        thread.kill();
        let (ledger, thread) = f.start();
        // A fresh download from 0 that stops at 2000 proves nothing about the span.
        ledger.credit(vec![credit("alice", "movie", 0, 0..2000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 0);
        assert!(f.store.cart_contains("alice", "movie").unwrap());
        thread.shutdown();
    }

    /// The chaos test's false completion: a connection still delivering the previous purchase
    /// (in the grace period) after the item was bought again must not fill the new purchase.
    #[test]
    fn a_credit_of_a_response_started_before_a_repurchase_does_not_count() {
        let f = Fixture::new();
        f.file("song", 400);
        f.store.cart_add("alice", "song").unwrap();
        let first = f.store.cart_added_at("alice", "song").unwrap().unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit_at("alice", "song", 0, 0..400, first)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 1);

        f.store.cart_add("alice", "song").unwrap();
        let again = f.store.cart_added_at("alice", "song").unwrap().unwrap();
        let old = again - 1;
        // The new purchase's own download delivers half; the old connection delivers it all.
        ledger.credit(vec![credit_at("alice", "song", 0, 0..200, again)]);
        ledger.credit(vec![credit_at("alice", "song", 0, 0..400, old)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 1);
        assert!(f.store.cart_contains("alice", "song").unwrap());
        // The new purchase kept its own progress and completes with its own bytes.
        ledger.credit(vec![credit_at("alice", "song", 0, 200..400, again)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "song"), 2);
        thread.shutdown();
    }

    #[test]
    fn a_replayed_record_of_an_older_purchase_does_not_count() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        f.store.cart_add("bob", "movie").unwrap();
        let alice = f.store.cart_added_at("alice", "movie").unwrap().unwrap();
        let bob = f.store.cart_added_at("bob", "movie").unwrap().unwrap();
        // Both killed with every byte credited; alice's run belonged to her previous purchase.
        killed_process_file_at(&f, "alice", "movie", 10_000, 10_000, alice - 1);
        killed_process_file_at(&f, "bob", "movie", 10_000, 10_000, bob);
        let (ledger, thread) = f.start();
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 0);
        assert!(f.store.cart_contains("alice", "movie").unwrap());
        assert_eq!(f.completions("bob", "movie"), 1);
        thread.shutdown();
    }

    #[test]
    fn an_evidence_span_of_an_older_purchase_is_not_proven_into_a_newer_one() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        let now = f.store.cart_added_at("alice", "movie").unwrap().unwrap();
        // The previous purchase's response had written everything, nothing acknowledged.
        killed_process_file_at(&f, "alice", "movie", 0, 10_000, now - 1);
        let (ledger, thread) = f.start();
        sync(&ledger);
        assert_eq!(ledger.stats().evidence_pending.load(Ordering::Relaxed), 1);
        // The new purchase's download resumes inside the span: it proves nothing for it.
        ledger.credit(vec![credit_at("alice", "movie", 0, 5000..10_000, now)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 0);
        assert!(f.store.cart_contains("alice", "movie").unwrap());
        // Its own bytes still complete it.
        ledger.credit(vec![credit_at("alice", "movie", 0, 0..5000, now)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 1);
        thread.shutdown();
    }

    /// The edge case of the rule: a response started in the very millisecond of the purchase
    /// counts for it; so a resume after a crash completes as before.
    #[test]
    fn a_resume_of_a_response_started_with_the_purchase_still_completes() {
        let f = Fixture::new();
        f.file("movie", 10_000);
        f.store.cart_add("alice", "movie").unwrap();
        let added = f.store.cart_added_at("alice", "movie").unwrap().unwrap();
        killed_process_file_at(&f, "alice", "movie", 4000, 7000, added);
        let (ledger, thread) = f.start();
        sync(&ledger);
        // The client resumes from what it holds, in a new response after the restart.
        ledger.credit(vec![credit("alice", "movie", 0, 5500..10_000)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "movie"), 1);
        assert_eq!(
            ledger.stats().evidence_credited.load(Ordering::Relaxed),
            1500
        );
        thread.shutdown();
    }

    #[test]
    fn an_empty_item_completes_on_its_empty_credit_once() {
        let f = Fixture::new();
        f.file("empty", 0);
        f.store.cart_add("alice", "empty").unwrap();
        let (ledger, thread) = f.start();
        ledger.credit(vec![credit("alice", "empty", 0, 0..0)]);
        sync(&ledger);
        ledger.credit(vec![credit("alice", "empty", 0, 0..0)]);
        sync(&ledger);
        assert_eq!(f.completions("alice", "empty"), 1);
        assert_eq!(f.events("alice", "empty"), 1);
        thread.shutdown();
    }

    #[test]
    fn a_gap_of_one_byte_never_completes() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(42);
        let mut state = state(&f);
        for case in 0..60 {
            use rand::Rng;
            let id = format!("item{case}");
            let album = rng.gen_bool(0.5);
            let sizes: Vec<u64> = if album {
                (0..rng.gen_range(1..4))
                    .map(|_| rng.gen_range(1..3000))
                    .collect()
            } else {
                vec![rng.gen_range(1..3000)]
            };
            if album {
                let lens: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
                f.album(&id, &lens);
            } else {
                f.file(&id, sizes[0] as usize);
            }
            f.store.cart_add("alice", &id).unwrap();
            let hole_part = rng.gen_range(0..sizes.len());
            let hole = rng.gen_range(0..sizes[hole_part]);
            // Random overlapping ranges over everything but the hole, in random order.
            let mut credits = Vec::new();
            for (part, &size) in sizes.iter().enumerate() {
                let mut at = 0;
                while at < size {
                    let end = (at + rng.gen_range(1..400)).min(size);
                    let start = at.saturating_sub(rng.gen_range(0..50));
                    for r in [start..end, start..end] {
                        if part == hole_part && r.contains(&hole) {
                            credits.push(credit("alice", &id, part as u32, r.start..hole));
                            credits.push(credit("alice", &id, part as u32, hole + 1..r.end));
                        } else {
                            credits.push(credit("alice", &id, part as u32, r));
                        }
                    }
                    at = end;
                }
            }
            credits.shuffle(&mut rng);
            for batch in credits.chunks(7) {
                apply(&mut state, batch.to_vec());
            }
            // Another user's delivery of the hole does not fill it.
            apply(
                &mut state,
                vec![credit("bob", &id, hole_part as u32, hole..hole + 1)],
            );
            assert_eq!(f.completions("alice", &id), 0, "case {case}");
            apply(
                &mut state,
                vec![credit("alice", &id, hole_part as u32, hole..hole + 1)],
            );
            assert_eq!(f.completions("alice", &id), 1, "case {case}");
        }
    }

    /// One request as the test receiver saw it.
    #[derive(Debug)]
    struct Received {
        idempotency_key: String,
        content_type: String,
        body: serde_json::Value,
    }

    /// A webhook receiver on a free loopback port: answers 500 to the first `fail_first`
    /// POSTs and 200 afterwards. Returns its URL and what it received.
    fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/weir", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        // Lives until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                assert!(request_line.starts_with("POST /hooks/weir HTTP/1.1"));
                let mut headers = HashMap::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                }
                let len: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut log = seen.lock().unwrap();
                let status = if log.len() < fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                log.push(Received {
                    idempotency_key: headers["idempotency-key"].clone(),
                    content_type: headers["content-type"].clone(),
                    body: serde_json::from_slice(&body).unwrap(),
                });
                drop(log);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        (url, log)
    }

    #[test]
    fn webhook_retries_with_a_stable_idempotency_key() {
        let f = Fixture::new();
        f.file("a", 100);
        f.file("b", 200);
        f.store.cart_add("alice", "a").unwrap();
        f.store.cart_add("alice", "b").unwrap();
        let (url, log) = receiver(1);
        let cfg = LedgerConfig {
            webhook: Some(url),
            ..f.config()
        };
        let (ledger, thread) = Ledger::start(cfg).unwrap();

        ledger.credit(vec![credit("alice", "a", 0, 0..100)]);
        sync(&ledger);
        let id_a = f.history_id("alice", "a");
        wait_until("the first event, retried", || {
            log.lock().unwrap().len() == 2 && f.outbox() == 0
        });
        ledger.credit(vec![credit("alice", "b", 0, 0..200)]);
        sync(&ledger);
        let id_b = f.history_id("alice", "b");
        wait_until("the second event", || {
            log.lock().unwrap().len() == 3 && f.outbox() == 0
        });

        let log = log.lock().unwrap();
        let key_a = format!("weir-completion-{id_a}");
        assert_eq!(log[0].idempotency_key, key_a);
        assert_eq!(
            log[1].idempotency_key, key_a,
            "the retry carries the same key"
        );
        assert_eq!(log[2].idempotency_key, format!("weir-completion-{id_b}"));
        assert_ne!(id_a, id_b);
        for r in log.iter() {
            assert_eq!(r.content_type, "application/json");
            assert_eq!(r.body["event"], "item.completed");
            assert_eq!(r.body["user"], "alice");
            assert!(r.body["completed_at_ms"].as_u64().unwrap() > 0);
        }
        assert_eq!(log[0].body, log[1].body);
        assert_eq!(log[1].body["item"], "a");
        assert_eq!(log[1].body["history_id"], id_a);
        assert_eq!(log[2].body["item"], "b");
        assert_eq!(log[2].body["history_id"], id_b);
        let stats = ledger.stats();
        assert_eq!(stats.webhook_delivered.load(Ordering::Relaxed), 2);
        assert_eq!(stats.webhook_failures.load(Ordering::Relaxed), 1);
        thread.shutdown();
    }

    #[test]
    fn webhook_queue_survives_a_restart() {
        let f = Fixture::new();
        f.file("a", 100);
        f.store.cart_add("alice", "a").unwrap();
        // A port nobody listens on: the receiver is down.
        let down = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hooks/weir", l.local_addr().unwrap())
        };
        let cfg = LedgerConfig {
            webhook: Some(down),
            webhook_timeout: Duration::from_secs(2),
            ..f.config()
        };
        let (ledger, thread) = Ledger::start(cfg).unwrap();
        ledger.credit(vec![credit("alice", "a", 0, 0..100)]);
        sync(&ledger);
        let stats = ledger.stats();
        wait_until("a failed delivery", || {
            stats.webhook_failures.load(Ordering::Relaxed) >= 1
        });
        thread.kill();
        drop(ledger);
        assert_eq!(f.outbox(), 1);
        let id = f.history_id("alice", "a");

        let (url, log) = receiver(0);
        let cfg = LedgerConfig {
            webhook: Some(url),
            ..f.config()
        };
        let (_ledger, thread) = Ledger::start(cfg).unwrap();
        wait_until("delivery after the restart", || {
            log.lock().unwrap().len() == 1 && f.outbox() == 0
        });
        let log = log.lock().unwrap();
        assert_eq!(log[0].idempotency_key, format!("weir-completion-{id}"));
        assert_eq!(log[0].body["history_id"], id);
        assert_eq!(f.completions("alice", "a"), 1);
        thread.shutdown();
    }

    #[test]
    fn a_bad_webhook_url_is_refused_at_start() {
        let f = Fixture::new();
        for bad in ["not a url", "ftp://example.com/x"] {
            let cfg = LedgerConfig {
                webhook: Some(bad.into()),
                ..f.config()
            };
            assert!(Ledger::start(cfg).is_err(), "{bad}");
        }
    }
}
