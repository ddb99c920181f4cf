//! The schema, as numbered migrations tracked by `PRAGMA user_version`.
//!
//! [`MIGRATIONS`]`[i]` brings a database from version `i` to `i + 1`; `migrate` runs the
//! missing ones on open, all in one immediate transaction. A new table or column is a new entry
//! at the end; an entry is never edited once released.
//!
//! Version 2 takes over the ledger's `progress` journal and the webhook outbox, which releases
//! up to version 1 created outside the migrations (with `CREATE TABLE IF NOT EXISTS`, when the
//! server first started). So version 2 uses `IF NOT EXISTS` too: on a data directory where the
//! old ledger already ran, the tables and their rows are kept as they are.

use rusqlite::{Connection, TransactionBehavior};

use super::interface::StoreError;

/// Version 1: users, the catalog, carts, history and events.
const V1: &str = "
CREATE TABLE users (
    name          TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,              -- argon2id PHC string
    rate          TEXT,                       -- NULL: the server's default; else Rate's Display form
    created_at    INTEGER NOT NULL
);
CREATE TABLE blobs (
    sha256      TEXT PRIMARY KEY NOT NULL,    -- lowercase hex; the file is store/<sha256>
    size        INTEGER NOT NULL,
    crc32       INTEGER NOT NULL,
    imported_at INTEGER NOT NULL
);
CREATE TABLE items (
    id         TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('file', 'album')),
    created_at INTEGER NOT NULL
);
-- The parts of an item: one for a file, the tracks in order for an album.
CREATE TABLE item_blobs (
    item   TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    n      INTEGER NOT NULL CHECK (n >= 1),   -- 1-based position
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    name   TEXT NOT NULL,                     -- the original file name
    size   INTEGER NOT NULL,
    crc32  INTEGER NOT NULL,
    mtime  INTEGER NOT NULL,                  -- unix seconds
    PRIMARY KEY (item, n)
);
CREATE TABLE cart (
    user     TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    item     TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (user, item)
);
-- Append-only; no foreign keys, so recording a completion can never be refused.
CREATE TABLE history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user         TEXT NOT NULL,
    item         TEXT NOT NULL,
    completed_at INTEGER NOT NULL
);
CREATE INDEX history_by_user ON history (user, completed_at);
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,
    user    TEXT,
    item    TEXT,
    at      INTEGER NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}'         -- JSON
);
";

/// Version 2: the completion ledger's journal and the webhook outbox.
const V2: &str = "
-- Delivered bytes per part of a purchase, flushed by the ledger.
CREATE TABLE IF NOT EXISTS progress (
    user          TEXT NOT NULL,
    item          TEXT NOT NULL,
    cart_added_at INTEGER NOT NULL,           -- the purchase: cart.added_at when credited
    part          INTEGER NOT NULL,           -- 0-based: 0 for a file, the track of an album
    intervals     BLOB NOT NULL,              -- IntervalSet::to_bytes
    PRIMARY KEY (user, item, part)
) WITHOUT ROWID;
-- Completion events waiting for the webhook.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,     -- weir-completion-<history id>
    payload         TEXT NOT NULL,            -- the JSON body, exactly as POSTed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at_ms      INTEGER NOT NULL          -- not sent before this unix time (ms)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_at_ms);
";

/// Version 3: an item's display name (`weir item add --name`, `weir album add --name`): the file
/// name a file is saved under, the zip's name for an album. NULL: the original file name, or the
/// album's id.
const V3: &str = "
ALTER TABLE items ADD COLUMN name TEXT;
";

/// Every migration, in order: entry `i` takes version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`SCHEMA_VERSION`] inside one immediate transaction, so two processes
/// opening a fresh directory at once do not both create it.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for step in &MIGRATIONS[version.max(0) as usize..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Schemas as earlier releases left them, for the upgrade tests.
#[cfg(test)]
pub(super) mod old {
    /// Version 1 as created by `Store::open` before version 2 existed.
    pub const V1_STORE: &str = super::V1;
    /// What the old ledger created on its first start, outside the migrations.
    pub const V1_LEDGER: &str = "
CREATE TABLE IF NOT EXISTS progress (
    user          TEXT NOT NULL,
    item          TEXT NOT NULL,
    cart_added_at INTEGER NOT NULL,
    part          INTEGER NOT NULL,
    intervals     BLOB NOT NULL,
    PRIMARY KEY (user, item, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_at_ms);
";
}
