//! Authorization off the I/O threads.
//!
//! argon2id verification is slow by design (tens of milliseconds) and SQLite reads block, so
//! neither runs on an I/O worker. A worker answers from its own caches when it can (verified
//! credentials, cart grants, mapped resources: see [`AuthCache`]); on a miss it parks the
//! connection and submits a [`Job`] here, which replies through the worker's inbox and wakes it
//! with an eventfd.
//!
//! Two queues, so that a flood of password guesses never delays anyone whose identity is
//! already known:
//! - **lookups** (signed links, credentials already verified, then cart grants, items and user
//!   rates): their own threads and a bounded queue ([`LOOKUP_QUEUE`]);
//! - **verifications** (argon2id): their own threads and a bounded queue ([`VERIFY_QUEUE`]). A
//!   verified request then continues on the lookup queue.
//!
//! Before a password reaches argon2 it passes three gates, in [`AuthPool::submit`]:
//! - **single flight**: requests carrying the same `Authorization` value while it is being
//!   verified wait for that one verification (40 connections of a download manager cost one);
//! - **per source address**: at most [`PENDING_PER_CLEAN_SOURCE`] verifications queued at once
//!   ([`PENDING_PER_SOURCE`] once it has failed recently), and a failed-attempt budget (`Throttle`): [`FAIL_BURST`] failures, refilled at one per
//!   [`FAIL_REFILL`]; past it the request is answered `429 Too Many Requests` with
//!   `Retry-After`, without running argon2, [`THROTTLE_DELAY`] late, and the connection closes;
//! - **per user name**: the same budget, applied only to sources that have themselves failed
//!   recently, so a guessing campaign against one name cannot lock its owner out of a clean
//!   address.
//!
//! A full queue is answered `503` with `Retry-After: 1`, as before.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use weir_shaper::Rate;

use crate::http::RequestHead;
use crate::password;
use crate::storage::Storage as _;
use crate::storage::Store;
use crate::token;

use super::resources::Resource;
use super::shaping::ShapeClass;
use super::sys;

/// Lookups waiting for a thread before new ones are refused with 503. Large enough for a
/// login burst of thousands of download-manager connections.
pub const LOOKUP_QUEUE: usize = 65_536;
/// Distinct credentials waiting for argon2 before new ones are refused with 503.
pub const VERIFY_QUEUE: usize = 1_024;
/// Verifications a source address that failed recently may have queued or running at once
/// (more: 429).
pub const PENDING_PER_SOURCE: u32 = 4;
/// The same for an address with no recent failure (many users behind one NAT, a load test).
pub const PENDING_PER_CLEAN_SOURCE: u32 = 32;
/// Failed attempts a source address (or a user name) may make in a burst.
pub const FAIL_BURST: f64 = 10.0;
/// One more failed attempt is allowed per this much time.
pub const FAIL_REFILL: Duration = Duration::from_secs(1);
/// A throttled request is answered this late (a tarpit): a guessing client that reconnects at
/// once after each 429 would otherwise cost the server an accept and an answer per guess.
pub const THROTTLE_DELAY: Duration = Duration::from_secs(1);
/// Requests waiting on one credential's verification (more: 503).
const WAITERS_PER_CREDENTIAL: usize = 4_096;

/// Who the request claims to be.
pub enum Claim {
    /// `Authorization: Basic ...`, the header value as received.
    Basic(String),
    /// A signed link whose signature the worker already verified.
    Link { user: String },
}

/// What a worker asks the pool.
pub struct Job {
    pub worker: usize,
    pub conn: u64,
    pub claim: Claim,
    pub item: String,
    /// The client's address, for the failed-attempt throttle (`None`: not throttled by source).
    pub peer: Option<IpAddr>,
}

/// The pool's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Authenticated but the item is not in this user's cart (403).
    Forbidden,
    /// No such item (404).
    NotFound,
    /// The store failed, or a queue is full (503).
    Unavailable,
    /// Too many failed attempts from this source or for this user name (429, `Retry-After`
    /// this many seconds).
    Throttled(u32),
}

pub struct Reply {
    pub conn: u64,
    pub verdict: Verdict,
    /// Authenticated user, when known.
    pub user: Option<Arc<str>>,
    /// The Basic header value that verified, to cache in the worker.
    pub verified_header: Option<String>,
    pub resource: Option<Arc<Resource>>,
    /// The user's own rate (`None`: the server default), read with the verdict.
    pub user_rate: Option<weir_shaper::Rate>,
}

impl Reply {
    fn new(conn: u64, verdict: Verdict) -> Reply {
        Reply {
            conn,
            verdict,
            user: None,
            verified_header: None,
            resource: None,
            user_rate: None,
        }
    }
}

/// A worker's mailbox: the channel and the eventfd that wakes it.
#[derive(Clone)]
pub struct Inbox {
    pub tx: Sender<Reply>,
    pub wake_fd: RawFd,
}

/// A job whose user is known: a signed link, or credentials verified (and which).
struct Lookup {
    job: Job,
    user: Arc<str>,
    verified_header: Option<String>,
}

/// One credential to verify; the jobs waiting on it are in [`Shared::inflight`].
struct Verify {
    header: String,
    peer: Option<IpAddr>,
}

/// Handle to the pool, cloned into each worker.
#[derive(Clone)]
pub struct AuthPool {
    shared: Arc<Shared>,
    lookups: Sender<Lookup>,
    verifies: Sender<Verify>,
    /// Throttled answers, sent when due by the tarpit thread.
    tarpit: Sender<(Instant, usize, Reply)>,
    /// Unit tests: jobs go here untouched.
    #[cfg(test)]
    detached: Option<Sender<Job>>,
}

struct Shared {
    data_dir: std::path::PathBuf,
    inboxes: Vec<Inbox>,
    /// Basic header value -> (user, verified at).
    verified: Mutex<HashMap<String, (Arc<str>, Instant)>>,
    /// Basic header value being verified -> the jobs waiting for it (single flight).
    inflight: Mutex<HashMap<String, Vec<Job>>>,
    throttle: Mutex<Throttle>,
    resources: Mutex<HashMap<String, Arc<Resource>>>,
    cred_ttl: Duration,
    /// Completed items stay downloadable this long.
    grace: Duration,
}

impl AuthPool {
    /// Start `threads` verification threads and `threads` lookup threads. Each opens its own
    /// store connection.
    pub fn start(
        data_dir: std::path::PathBuf,
        threads: usize,
        inboxes: Vec<Inbox>,
        resources: HashMap<String, Arc<Resource>>,
        cred_ttl: Duration,
        grace: Duration,
    ) -> anyhow::Result<AuthPool> {
        password::release_work_memory();
        let (lookups, lookup_rx) = crossbeam_channel::bounded::<Lookup>(LOOKUP_QUEUE);
        let (verifies, verify_rx) = crossbeam_channel::bounded::<Verify>(VERIFY_QUEUE);
        // Unbounded, but at most one entry per open connection (its parked request).
        let (tarpit, tarpit_rx) = crossbeam_channel::unbounded::<(Instant, usize, Reply)>();
        let shared = Arc::new(Shared {
            data_dir,
            inboxes,
            verified: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            resources: Mutex::new(resources),
            cred_ttl,
            grace,
        });
        let pool = AuthPool {
            shared: shared.clone(),
            lookups,
            verifies,
            tarpit,
            #[cfg(test)]
            detached: None,
        };
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("weir-tarpit".into())
                .spawn(move || tarpit_thread(&shared, &tarpit_rx))?;
        }
        for i in 0..threads.max(1) {
            let store = Store::open(&shared.data_dir)?;
            let rx: Receiver<Lookup> = lookup_rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("weir-lookup-{i}"))
                .spawn(move || {
                    for l in rx {
                        let reply = shared.lookup(&store, l);
                        shared.send(reply.0, reply.1);
                    }
                })?;
        }
        for i in 0..threads.max(1) {
            let store = Store::open(&shared.data_dir)?;
            let rx: Receiver<Verify> = verify_rx.clone();
            let pool = pool.clone();
            std::thread::Builder::new()
                .name(format!("weir-verify-{i}"))
                .spawn(move || {
                    for v in rx {
                        pool.verify(&store, v);
                    }
                })?;
        }
        Ok(pool)
    }

    /// A pool with no threads, for unit tests: its jobs wait in the returned receiver.
    #[cfg(test)]
    pub fn detached() -> (AuthPool, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(16);
        let (lookups, _) = crossbeam_channel::bounded(1);
        let (verifies, _) = crossbeam_channel::bounded(1);
        let (tarpit, _) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            data_dir: Default::default(),
            inboxes: Vec::new(),
            verified: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            resources: Mutex::new(HashMap::new()),
            cred_ttl: Duration::ZERO,
            grace: Duration::ZERO,
        });
        let pool = AuthPool {
            shared,
            lookups,
            verifies,
            tarpit,
            detached: Some(tx),
        };
        (pool, rx)
    }

    /// Queue a job; `false` when its queue is full (answer 503). A throttled job is accepted
    /// and answered [`Verdict::Throttled`] through the worker's inbox.
    /// Jobs queued for the pool's threads (store lookups and password verifications).
    pub fn queued(&self) -> usize {
        self.lookups.len() + self.verifies.len()
    }

    pub fn submit(&self, job: Job) -> bool {
        #[cfg(test)]
        if let Some(tx) = &self.detached {
            return tx.try_send(job).is_ok();
        }
        let header = match job.claim {
            Claim::Link { ref user } => {
                let user = Arc::from(user.as_str());
                return self.lookup_later(Lookup {
                    job,
                    user,
                    verified_header: None,
                });
            }
            Claim::Basic(ref h) => h.clone(),
        };
        if let Some(user) = self.shared.cached(&header) {
            return self.lookup_later(Lookup {
                job,
                user,
                verified_header: Some(header),
            });
        }
        let mut inflight = self.shared.inflight.lock().unwrap();
        if let Some(waiting) = inflight.get_mut(&header) {
            if waiting.len() >= WAITERS_PER_CREDENTIAL {
                return false;
            }
            waiting.push(job);
            return true;
        }
        let name = decode_basic(&header).map(|(n, _)| n);
        let admitted =
            self.shared
                .throttle
                .lock()
                .unwrap()
                .admit(job.peer, name.as_deref(), Instant::now());
        if let Err(retry_after) = admitted {
            drop(inflight);
            let reply = Reply::new(job.conn, Verdict::Throttled(retry_after));
            let due = Instant::now() + THROTTLE_DELAY;
            return self.tarpit.send((due, job.worker, reply)).is_ok();
        }
        let peer = job.peer;
        inflight.insert(header.clone(), vec![job]);
        drop(inflight);
        match self.verifies.try_send(Verify {
            header: header.clone(),
            peer,
        }) {
            Ok(()) => true,
            Err(_) => {
                self.shared.throttle.lock().unwrap().done(peer);
                let mut jobs = self
                    .shared
                    .inflight
                    .lock()
                    .unwrap()
                    .remove(&header)
                    .unwrap_or_default();
                // The first job is the caller's: it answers 503 itself.
                for job in jobs.drain(..).skip(1) {
                    self.shared
                        .send(job.worker, Reply::new(job.conn, Verdict::Unavailable));
                }
                false
            }
        }
    }

    fn lookup_later(&self, l: Lookup) -> bool {
        match self.lookups.try_send(l) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// On a verification thread: check one credential, then release everyone waiting on it.
    fn verify(&self, store: &Store, v: Verify) {
        let outcome = self.shared.verify_basic(store, &v.header);
        let failed_name = match &outcome {
            Ok(None) => decode_basic(&v.header).map(|(n, _)| n),
            _ => None,
        };
        {
            let mut throttle = self.shared.throttle.lock().unwrap();
            throttle.done(v.peer);
            if let Ok(None) = outcome {
                throttle.failed(v.peer, failed_name.as_deref(), Instant::now());
            }
        }
        let jobs = self
            .shared
            .inflight
            .lock()
            .unwrap()
            .remove(&v.header)
            .unwrap_or_default();
        for job in jobs {
            match &outcome {
                Ok(Some(user)) => {
                    let (worker, conn) = (job.worker, job.conn);
                    let queued = self.lookup_later(Lookup {
                        job,
                        user: user.clone(),
                        verified_header: Some(v.header.clone()),
                    });
                    if !queued {
                        self.shared
                            .send(worker, Reply::new(conn, Verdict::Unavailable));
                    }
                }
                Ok(None) => self
                    .shared
                    .send(job.worker, Reply::new(job.conn, Verdict::Unauthorized)),
                Err(e) => {
                    tracing::error!(error = %e, "store error while verifying a password");
                    self.shared
                        .send(job.worker, Reply::new(job.conn, Verdict::Unavailable));
                }
            }
        }
    }
}

/// Send each throttled answer when it is due (they arrive in due order: one fixed delay).
fn tarpit_thread(shared: &Shared, rx: &Receiver<(Instant, usize, Reply)>) {
    for (due, worker, reply) in rx {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        shared.send(worker, reply);
    }
}

impl Shared {
    fn send(&self, worker: usize, reply: Reply) {
        let inbox = &self.inboxes[worker];
        if inbox.tx.send(reply).is_ok() {
            sys::eventfd_wake(inbox.wake_fd);
        }
    }

    fn cached(&self, header: &str) -> Option<Arc<str>> {
        match self.verified.lock().unwrap().get(header) {
            Some((user, at)) if at.elapsed() < self.cred_ttl => Some(user.clone()),
            _ => None,
        }
    }

    /// On a lookup thread: the user's rate, the item, and whether the cart grants it.
    fn lookup(&self, store: &Store, l: Lookup) -> (usize, Reply) {
        let Lookup {
            job,
            user,
            verified_header,
        } = l;
        let mut reply = Reply::new(job.conn, Verdict::Unauthorized);
        reply.verified_header = verified_header;
        reply.user = Some(user.clone());
        if let Ok(Some(rec)) = store.user(&user) {
            reply.user_rate = rec.rate;
        }
        match self.resource(store, &job.item) {
            Ok(Some(r)) => reply.resource = Some(r),
            Ok(None) => {
                reply.verdict = Verdict::NotFound;
                return (job.worker, reply);
            }
            Err(e) => {
                tracing::error!(item = %job.item, error = %e, "cannot load item");
                reply.verdict = Verdict::Unavailable;
                return (job.worker, reply);
            }
        }
        let grace_since = crate::storage::now_ms().saturating_sub(self.grace.as_millis() as u64);
        let allowed = store.cart_contains(&user, &job.item).and_then(|in_cart| {
            Ok(in_cart || store.recently_completed(&user, &job.item, grace_since)?)
        });
        reply.verdict = match allowed {
            Ok(true) => Verdict::Allowed,
            Ok(false) => Verdict::Forbidden,
            Err(e) => {
                tracing::error!(error = %e, "store error while reading a cart");
                Verdict::Unavailable
            }
        };
        (job.worker, reply)
    }

    /// `Ok(Some(user))` when the Basic credentials are right.
    fn verify_basic(&self, store: &Store, header: &str) -> anyhow::Result<Option<Arc<str>>> {
        if let Some(user) = self.cached(header) {
            return Ok(Some(user));
        }
        let Some((name, pass)) = decode_basic(header) else {
            return Ok(None);
        };
        let Some(rec) = store.user(&name)? else {
            // Spend the same time as a real check so user names can't be probed by timing.
            let _ = password::verify_password(&pass, DUMMY_HASH.get_or_init(dummy_hash));
            return Ok(None);
        };
        if !password::verify_password(&pass, &rec.password_hash) {
            return Ok(None);
        }
        let user: Arc<str> = Arc::from(name.as_str());
        let mut verified = self.verified.lock().unwrap();
        if verified.len() > 100_000 {
            let ttl = self.cred_ttl;
            verified.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        verified.insert(header.to_string(), (user.clone(), Instant::now()));
        Ok(Some(user))
    }

    fn resource(&self, store: &Store, id: &str) -> anyhow::Result<Option<Arc<Resource>>> {
        if let Some(r) = self.resources.lock().unwrap().get(id) {
            return Ok(Some(r.clone()));
        }
        let Some(item) = store.item(id)? else {
            return Ok(None);
        };
        let r = Arc::new(Resource::load(&item)?);
        self.resources
            .lock()
            .unwrap()
            .insert(id.to_string(), r.clone());
        Ok(Some(r))
    }
}

/// A leaky bucket of failed attempts: each failure adds one, one drains per [`FAIL_REFILL`].
#[derive(Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant) -> f64 {
        let drained =
            now.saturating_duration_since(self.at).as_secs_f64() / FAIL_REFILL.as_secs_f64();
        (self.level - drained).max(0.0)
    }
}

/// Failed password attempts by source address and by user name, and verifications in flight
/// by source address.
#[derive(Default)]
struct Throttle {
    by_source: HashMap<IpAddr, Bucket>,
    by_name: HashMap<String, Bucket>,
    pending: HashMap<IpAddr, u32>,
}

/// Seconds until `level` drops below the burst (at least 1).
fn retry_after(level: f64) -> u32 {
    let secs = (level - FAIL_BURST + 1.0) * FAIL_REFILL.as_secs_f64();
    secs.ceil().clamp(1.0, 3600.0) as u32
}

impl Throttle {
    /// May a verification for `name` from `peer` run now? `Err(seconds)`: answer 429.
    fn admit(&mut self, peer: Option<IpAddr>, name: Option<&str>, now: Instant) -> Result<(), u32> {
        let source = peer
            .and_then(|p| self.by_source.get(&p))
            .map_or(0.0, |b| b.level(now));
        if source >= FAIL_BURST {
            return Err(retry_after(source));
        }
        if source >= 1.0 {
            let by_name = name
                .and_then(|n| self.by_name.get(n))
                .map_or(0.0, |b| b.level(now));
            if by_name >= FAIL_BURST {
                return Err(retry_after(by_name));
            }
        }
        if let Some(p) = peer {
            let pending = self.pending.entry(p).or_default();
            let cap = if source >= 1.0 {
                PENDING_PER_SOURCE
            } else {
                PENDING_PER_CLEAN_SOURCE
            };
            if *pending >= cap {
                return Err(1);
            }
            *pending += 1;
        }
        Ok(())
    }

    /// A verification admitted for `peer` finished.
    fn done(&mut self, peer: Option<IpAddr>) {
        if let Some(p) = peer {
            if let Some(n) = self.pending.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending.remove(&p);
                }
            }
        }
    }

    fn failed(&mut self, peer: Option<IpAddr>, name: Option<&str>, now: Instant) {
        if let Some(p) = peer {
            add_failure(&mut self.by_source, p, now);
        }
        if let Some(n) = name {
            add_failure(&mut self.by_name, n.to_string(), now);
        }
    }
}

fn add_failure<K: Hash + Eq>(map: &mut HashMap<K, Bucket>, key: K, now: Instant) {
    if map.len() > 100_000 {
        map.retain(|_, b| b.level(now) > 0.0);
    }
    let b = map.entry(key).or_insert(Bucket {
        level: 0.0,
        at: now,
    });
    b.level = b.level(now) + 1.0;
    b.at = now;
}

static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn dummy_hash() -> String {
    password::hash_password("weir-timing-equaliser").unwrap_or_default()
}

/// Decode `Basic base64(user:pass)`; `None` when malformed.
pub fn decode_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// What a worker's caches decide for a request for `item`.
pub enum Decision {
    /// Serve `res` to `user`, shaped as `class` when a signed link names one.
    Serve {
        res: Arc<Resource>,
        user: Arc<str>,
        class: Option<ShapeClass>,
    },
    /// Answer with this status: 400 (malformed link), 401 (no credentials), 403 (a link that
    /// does not verify, or names a rate class this server does not know).
    Refuse(u16),
    /// The caches cannot tell: park the request and ask the pool with this claim.
    Ask {
        claim: Claim,
        class: Option<ShapeClass>,
    },
}

/// A worker's own caches: the hit path of authorization touches no lock and no other thread.
pub struct AuthCache {
    /// Basic header value -> (user, valid until).
    pub creds: HashMap<String, (Arc<str>, Instant)>,
    /// "user\0item" -> cart grant valid until.
    pub grants: HashMap<String, Instant>,
    pub resources: HashMap<String, Arc<Resource>>,
    key: String,
    pub cred_ttl: Duration,
    pub grant_ttl: Duration,
}

impl AuthCache {
    pub fn new(resources: HashMap<String, Arc<Resource>>, cred_ttl: Duration) -> AuthCache {
        AuthCache {
            creds: HashMap::new(),
            grants: HashMap::new(),
            resources,
            key: String::new(),
            cred_ttl,
            // Cart changes made by the shop are seen within this time.
            grant_ttl: Duration::from_secs(2),
        }
    }

    pub fn user_for(&self, header: &str, now: Instant) -> Option<Arc<str>> {
        match self.creds.get(header) {
            Some((u, until)) if *until > now => Some(u.clone()),
            _ => None,
        }
    }

    pub fn granted(&mut self, user: &str, item: &str, now: Instant) -> bool {
        self.key.clear();
        self.key.push_str(user);
        self.key.push('\0');
        self.key.push_str(item);
        matches!(self.grants.get(self.key.as_str()), Some(until) if *until > now)
    }

    /// Authenticate and authorize a request for `item` from the caches: a signed link is
    /// verified here (no store round trip), Basic credentials are looked up among those
    /// verified recently, and the cart grant must be cached too.
    pub fn authorize(
        &mut self,
        secret: &[u8],
        rate_classes: &HashMap<String, Rate>,
        head: &RequestHead,
        item: &str,
        now: Instant,
    ) -> Decision {
        let claim_user: Option<Arc<str>>;
        let mut class: Option<ShapeClass> = None;
        if let Some(q) = head.query.as_deref().filter(|q| token::has_signature(q)) {
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match token::verify(secret, item, q, now_unix) {
                Ok(claims) => {
                    if let Some(name) = &claims.rate_class {
                        // A class the server does not know cannot be honoured: refuse the link.
                        let Some(rate) = rate_classes.get(name) else {
                            return Decision::Refuse(403);
                        };
                        class = Some((Arc::from(format!("{}/{name}", claims.user)), *rate));
                    }
                    claim_user = Some(Arc::from(claims.user.as_str()));
                }
                Err(token::TokenError::Malformed) => return Decision::Refuse(400),
                Err(_) => return Decision::Refuse(403),
            }
        } else if let Some(auth) = head.authorization.as_deref() {
            claim_user = self.user_for(auth, now);
        } else {
            return Decision::Refuse(401);
        }
        if let Some(user) = &claim_user {
            if self.granted(user, item, now) {
                if let Some(res) = self.resources.get(item).cloned() {
                    return Decision::Serve {
                        res,
                        user: user.clone(),
                        class,
                    };
                }
            }
        }
        let claim = match claim_user {
            Some(user) => Claim::Link {
                user: user.to_string(),
            },
            None => Claim::Basic(head.authorization.clone().unwrap_or_default()),
        };
        Decision::Ask { claim, class }
    }

    /// Remember what a pool reply established.
    pub fn learn(&mut self, reply: &Reply, item: &str, now: Instant) {
        if let (Some(h), Some(u)) = (&reply.verified_header, &reply.user) {
            if self.creds.len() > 50_000 {
                self.creds.retain(|_, (_, until)| *until > now);
            }
            self.creds
                .insert(h.clone(), (u.clone(), now + self.cred_ttl));
        }
        if let Some(r) = &reply.resource {
            self.resources
                .entry(r.id.clone())
                .or_insert_with(|| r.clone());
        }
        if let (Verdict::Allowed, Some(u)) = (&reply.verdict, &reply.user) {
            if self.grants.len() > 100_000 {
                self.grants.retain(|_, until| *until > now);
            }
            self.grants
                .insert(format!("{u}\0{item}"), now + self.grant_ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn a_source_past_its_failure_budget_waits() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for _ in 0..FAIL_BURST as usize {
            assert_eq!(t.admit(A, Some("alice"), now), Ok(()));
            t.done(A);
            t.failed(A, Some("alice"), now);
        }
        assert_eq!(t.admit(A, Some("alice"), now), Err(1));
        // Another source with a clean record may still try alice's password.
        assert_eq!(t.admit(B, Some("alice"), now), Ok(()));
        t.done(B);
        // One refill later, A may try once more.
        assert_eq!(t.admit(A, Some("zed"), now + FAIL_REFILL), Ok(()));
    }

    #[test]
    fn a_name_past_its_budget_is_refused_to_sources_that_failed() {
        let mut t = Throttle::default();
        let now = Instant::now();
        // Ten sources fail once each on alice.
        for i in 0..FAIL_BURST as u8 {
            let src = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)));
            t.failed(src, Some("alice"), now);
        }
        let failed_before = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 0)));
        assert!(t.admit(failed_before, Some("alice"), now).is_err());
        assert_eq!(t.admit(failed_before, Some("bob"), now), Ok(()));
        assert_eq!(t.admit(A, Some("alice"), now), Ok(()), "a clean source");
    }

    #[test]
    fn a_source_has_few_verifications_in_flight() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for _ in 0..PENDING_PER_CLEAN_SOURCE {
            assert_eq!(t.admit(A, None, now), Ok(()));
        }
        assert_eq!(t.admit(A, None, now), Err(1));
        t.done(A);
        assert_eq!(t.admit(A, None, now), Ok(()));
        // Once it failed, a source has fewer.
        t.failed(B, None, now);
        for _ in 0..PENDING_PER_SOURCE {
            assert_eq!(t.admit(B, None, now), Ok(()));
        }
        assert_eq!(t.admit(B, None, now), Err(1));
        assert_eq!(
            t.admit(None, None, now),
            Ok(()),
            "no address: not throttled by source"
        );
    }

    #[test]
    fn retry_after_counts_the_refill() {
        assert_eq!(retry_after(FAIL_BURST), 1);
        assert_eq!(retry_after(FAIL_BURST + 4.0), 5);
    }
}
