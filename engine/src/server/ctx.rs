//! What a worker's connections share: the context the connection state machine reads and
//! updates (configuration, caches, the shaper, the credit batch, the loop's clock).

use std::sync::Arc;
use std::time::Instant;

use crate::config::ServeConfig;
use crate::http::{DateCache, Limits};

use super::auth::{AuthCache, AuthPool};
use super::credit::CreditBatch;
use super::shaping::Shaping;
use super::stats::WorkerStats;

/// Per-worker context the connection state machine reads and updates.
pub struct Ctx {
    pub id: usize,
    pub cfg: Arc<ServeConfig>,
    pub limits: Limits,
    pub date: DateCache,
    pub secret: Arc<Vec<u8>>,
    pub cache: AuthCache,
    pub pool: AuthPool,
    /// Time of the current loop iteration (one clock read per batch of events).
    pub now: Instant,
    pub draining: bool,
    /// Receive buffer shared by all connections of this worker.
    pub scratch: Box<[u8]>,
    /// Acknowledged content not yet handed to the ledger.
    pub credits: CreditBatch,
    pub stats: Arc<WorkerStats>,
    pub shaping: Shaping,
    /// The access log, when one is configured.
    pub access: Option<crate::accesslog::AccessLog>,
}
