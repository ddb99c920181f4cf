//! Authorization off the I/O threads.
//!
//! argon2id verification is slow by design (tens of milliseconds) and SQLite reads block, so
//! neither runs on an I/O worker. A worker answers from its own caches when it can (verified
//! credentials, cart grants, mapped resources: see [`AuthCache`]); on a miss it parks the
//! connection and sends a [`Job`] to this small pool of threads, which replies through the
//! worker's inbox and wakes it with an eventfd. The pool shares one verified-credentials cache so
//! 40 connections of one download manager cost one argon2 verification, not 40.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use weir_shaper::Rate;

use crate::http::RequestHead;
use crate::password;
use crate::storage::Storage as _;
use crate::store::Store;
use crate::token;

use super::resources::Resource;
use super::shaping::ShapeClass;
use super::sys;

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
}

/// The pool's answer.
pub enum Verdict {
    Allowed,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Authenticated but the item is not in this user's cart (403).
    Forbidden,
    /// No such item (404).
    NotFound,
    /// The store failed (503).
    Unavailable,
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

/// A worker's mailbox: the channel and the eventfd that wakes it.
#[derive(Clone)]
pub struct Inbox {
    pub tx: Sender<Reply>,
    pub wake_fd: RawFd,
}

/// Handle to the pool, cloned into each worker.
#[derive(Clone)]
pub struct AuthPool {
    tx: Sender<Job>,
}

struct Shared {
    data_dir: std::path::PathBuf,
    inboxes: Vec<Inbox>,
    /// Basic header value -> (user, verified at).
    verified: Mutex<HashMap<String, (Arc<str>, Instant)>>,
    resources: Mutex<HashMap<String, Arc<Resource>>>,
    cred_ttl: Duration,
    /// Completed items stay downloadable this long.
    grace: Duration,
}

impl AuthPool {
    /// Start `threads` pool threads. Each opens its own store connection.
    pub fn start(
        data_dir: std::path::PathBuf,
        threads: usize,
        inboxes: Vec<Inbox>,
        resources: HashMap<String, Arc<Resource>>,
        cred_ttl: Duration,
        grace: Duration,
    ) -> anyhow::Result<AuthPool> {
        // Bounded: when password checks pile up, new ones are refused with 503 instead of
        // queueing forever. Large enough for a login burst of thousands of download-manager
        // connections (jobs for a credential already verified are answered from the cache).
        let (tx, rx) = crossbeam_channel::bounded::<Job>(65_536);
        let shared = Arc::new(Shared {
            data_dir,
            inboxes,
            verified: Mutex::new(HashMap::new()),
            resources: Mutex::new(resources),
            cred_ttl,
            grace,
        });
        for i in 0..threads.max(1) {
            let store = Store::open(&shared.data_dir)?;
            let rx: Receiver<Job> = rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("weir-auth-{i}"))
                .spawn(move || {
                    for job in rx {
                        let reply = shared.handle(&store, &job);
                        let inbox = &shared.inboxes[job.worker];
                        if inbox.tx.send(reply).is_ok() {
                            sys::eventfd_wake(inbox.wake_fd);
                        }
                    }
                })?;
        }
        Ok(AuthPool { tx })
    }

    /// A pool with no threads, for unit tests: its jobs wait in the returned receiver.
    #[cfg(test)]
    pub fn detached() -> (AuthPool, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(16);
        (AuthPool { tx }, rx)
    }

    /// Queue a job; `false` when the pool is saturated (answer 503).
    pub fn submit(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Shared {
    fn handle(&self, store: &Store, job: &Job) -> Reply {
        let mut reply = Reply {
            conn: job.conn,
            verdict: Verdict::Unauthorized,
            user: None,
            verified_header: None,
            resource: None,
            user_rate: None,
        };
        let user: Arc<str> = match &job.claim {
            Claim::Link { user } => Arc::from(user.as_str()),
            Claim::Basic(header) => match self.verify_basic(store, header) {
                Ok(Some(user)) => {
                    reply.verified_header = Some(header.clone());
                    user
                }
                Ok(None) => return reply,
                Err(e) => {
                    tracing::error!(error = %e, "store error while verifying a password");
                    reply.verdict = Verdict::Unavailable;
                    return reply;
                }
            },
        };
        reply.user = Some(user.clone());
        if let Ok(Some(rec)) = store.user(&user) {
            reply.user_rate = rec.rate;
        }
        match self.resource(store, &job.item) {
            Ok(Some(r)) => reply.resource = Some(r),
            Ok(None) => {
                reply.verdict = Verdict::NotFound;
                return reply;
            }
            Err(e) => {
                tracing::error!(item = %job.item, error = %e, "cannot load item");
                reply.verdict = Verdict::Unavailable;
                return reply;
            }
        }
        let grace_since = now_ms().saturating_sub(self.grace.as_millis() as u64);
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
        reply
    }

    /// `Ok(Some(user))` when the Basic credentials are right.
    fn verify_basic(&self, store: &Store, header: &str) -> anyhow::Result<Option<Arc<str>>> {
        if let Some((user, at)) = self.verified.lock().unwrap().get(header) {
            if at.elapsed() < self.cred_ttl {
                return Ok(Some(user.clone()));
            }
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
