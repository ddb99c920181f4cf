//! Persistence: the one owner of every table, every query and every migration.
//!
//! The rest of the engine reads and writes durable state only through the [`Storage`] trait:
//! users, the catalog, carts and history (the CLI, the admin listener and the auth pool), the
//! completion ledger's journal and its one-transaction completion commit, and the webhook
//! outbox. [`SqliteStore`] (alias [`Store`]) is the only backend today; a second one (a shared
//! store for several hosts) implements the same trait and runs the same conformance suite
//! (`storage::conformance`, instantiated for SQLite in [`sqlite`]'s tests).
//!
//! | file | what |
//! |---|---|
//! | `interface.rs` | the [`Storage`] trait, its records and errors, checks shared by backends |
//! | `sqlite.rs` | [`SqliteStore`]: every SQL statement, the connection and durability policy |
//! | `migrations.rs` | the schema as numbered `user_version` migrations |
//! | `conformance.rs` | tests: the behaviour every backend must have, written once |
//!
//! Imports go one way: the children use `interface` (and `sqlite` uses `migrations`); this
//! file only declares and re-exports; storage depends on [`crate::catalog`] (the `Blob` record),
//! [`crate::intervals`] and [`crate::token`], and never on `completion` or `server`.
//!
//! # The data directory
//!
//! Created by [`SqliteStore::open`] when missing, mode 0700:
//!
//! | path | what |
//! |---|---|
//! | `weir.db` (+ `-wal`, `-shm`) | SQLite in WAL mode; schema in [`migrations`] |
//! | `store/<sha256hex>` | the immutable content store (see [`crate::catalog`]) |
//! | `secret` | 32 random bytes as hex, mode 0600: the key of signed links ([`crate::token`]) |
//! | `admin-token` | 32 random hex characters, mode 0600: the admin listener's bearer token |
//! | `demo-credentials` | only on a demo data directory (see [`crate::demo`]) |
//!
//! Every table is created by a numbered migration tracked by `PRAGMA user_version`
//! ([`SCHEMA_VERSION`]), run in one immediate transaction on open. Timestamps are unix
//! milliseconds unless a column says otherwise.
//!
//! # Durability policy (fsync, WAL)
//!
//! The database is in WAL mode; every connection waits up to 5 s for a lock held by another
//! (`busy_timeout`). Each connection commits with one [`Durability`]:
//!
//! - [`Durability::Full`] (`synchronous = FULL`, what [`SqliteStore::open`] gives the CLI, the
//!   admin listener and the auth pool): a committed transaction survives power loss.
//! - [`Durability::Normal`] (`synchronous = NORMAL`, the ledger's and the webhook sender's
//!   connections): a commit survives SIGKILL (the WAL frame is in the page cache) but the last
//!   ones may be lost to power loss. That is fine for journaled progress (bytes fetched again)
//!   and outbox bookkeeping (one more delivery of the same key).
//! - [`Storage::commit_completion`] always commits with `synchronous = FULL`, whatever the
//!   connection's default: a completion is never lost, and fsyncing the WAL also makes every
//!   earlier frame durable.
//!
//! Every call blocks on disk: the server makes them on its auth, ledger and webhook threads,
//! never on an I/O worker.
//!
//! User names and item ids share one alphabet, checked by [`valid_id`].

mod interface;
pub mod migrations;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod conformance;

pub use crate::catalog::Blob;
pub(crate) use interface::create_private_file;
pub use interface::{
    check_display_name, check_item, idempotency_key, now_ms, valid_id, webhook_payload, CartEntry,
    Completed, Completion, HistoryEntry, Item, ItemKind, JournaledPurchase, OutboxEntry,
    ProgressRow, ProgressWrite, Storage, StoreError, UserRecord,
};
pub use migrations::SCHEMA_VERSION;
pub use sqlite::{Durability, SqliteStore};

/// The backend the engine runs on: the SQLite data directory.
pub type Store = SqliteStore;
