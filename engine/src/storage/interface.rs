//! The storage interface: the [`Storage`] trait, the records it reads and writes, its errors,
//! and the checks every backend applies the same way (see the [module docs](super)).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use weir_shaper::Rate;

use crate::catalog::Blob;
use crate::intervals::IntervalSet;

/// Why a storage operation failed. Variants a caller can act on name the condition.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer weir.
    #[error("database schema version {found} is newer than this weir supports ({supported})")]
    NewerSchema { found: i64, supported: i64 },
    /// The name or id is outside the allowed alphabet (see [`valid_id`]).
    #[error("{0:?} is not a valid name: use 1 to 128 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit")]
    InvalidId(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no such user: {0:?}")]
    UnknownUser(String),
    #[error("item {0:?} already exists")]
    ItemExists(String),
    #[error("no such item: {0:?}")]
    UnknownItem(String),
    /// The parts given for an item do not make a valid file or album.
    #[error("item {id:?}: {reason}")]
    InvalidItem { id: String, reason: String },
    /// A part names a blob that is not (intact) in the content store; import it first.
    #[error("blob {0} is not in the content store (import the file first)")]
    MissingBlob(String),
    /// `secret` or `admin-token` exists but is not usable.
    #[error("{path}: {reason}")]
    BadSecretFile { path: PathBuf, reason: String },
    /// The database holds a value this build cannot read.
    #[error("corrupt database: {0}")]
    Corrupt(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `s` is a valid item id or user name: `^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`.
///
/// The same alphabet as signed links ([`crate::token::valid_field`]), so ids and names appear in
/// URLs and queries without escaping; the first character may not be punctuation, so no id is
/// `.` or `..` or looks like an option.
pub fn valid_id(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) && crate::token::valid_field(s)
}

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// One file.
    File,
    /// An ordered list of tracks, downloadable one by one or as a zip.
    Album,
}

impl ItemKind {
    /// The name stored in the database and shown by the CLI: `file` or `album`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::File => "file",
            ItemKind::Album => "album",
        }
    }
}

impl FromStr for ItemKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(ItemKind::File),
            "album" => Ok(ItemKind::Album),
            other => Err(format!("unknown item kind {other:?}")),
        }
    }
}

/// A downloadable item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub kind: ItemKind,
    /// The display name set with `--name` (see [`check_display_name`]): a file is saved under
    /// it, an album's zip as `NAME.zip`. `None`: the original file name, or the album's id.
    pub name: Option<String>,
    /// A file: exactly one part; an album: its tracks in order.
    pub parts: Vec<Blob>,
}

impl Item {
    /// Total bytes of all parts.
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `None`: the server's default user rate.
    pub rate: Option<Rate>,
}

/// An item in a user's cart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CartEntry {
    pub item: String,
    pub added_at_ms: u64,
}

/// A completed download.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub item: String,
    pub completed_at_ms: u64,
}

/// One journaled part of a purchase's progress, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressRow {
    /// The purchase the row belongs to: the cart row's `added_at` when it was credited.
    pub cart_added_at: i64,
    /// 0 for a file, the 0-based track of an album (as stored: may be out of range).
    pub part: i64,
    /// The delivered intervals, `None` when the stored form does not decode.
    pub intervals: Option<IntervalSet>,
}

/// One part of a purchase's progress to journal.
#[derive(Clone, Copy, Debug)]
pub struct ProgressWrite<'a> {
    pub user: &'a str,
    pub item: &'a str,
    pub cart_added_at: i64,
    pub part: u32,
    pub intervals: &'a IntervalSet,
}

/// A purchase with journaled progress: (user, item, the cart row's `added_at`).
pub type JournaledPurchase = (String, String, i64);

/// A purchase found complete, for [`Storage::commit_completion`].
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    pub user: &'a str,
    pub item: &'a str,
    /// The purchase: the cart row's `added_at`. Nothing is recorded when the cart row with this
    /// `added_at` is gone.
    pub cart_added_at: i64,
    /// Total bytes and number of parts of the item (recorded in the event).
    pub size: u64,
    pub parts: usize,
    /// Queue a webhook event in the same transaction.
    pub notify: bool,
}

/// A recorded completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The history row; names the webhook event ([`idempotency_key`]).
    pub history_id: i64,
    pub completed_at_ms: u64,
}

/// One queued webhook event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    /// The `Idempotency-Key` header: [`idempotency_key`] of the history row.
    pub key: String,
    /// The JSON body, exactly as POSTed ([`webhook_payload`]).
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// The `Idempotency-Key` of the completion recorded as history row `history_id`.
pub fn idempotency_key(history_id: i64) -> String {
    format!("weir-completion-{history_id}")
}

/// The JSON body POSTed for a completion (see [`crate::completion::webhook`]).
pub fn webhook_payload(user: &str, item: &str, completed_at_ms: u64, history_id: i64) -> String {
    serde_json::json!({
        "event": "item.completed",
        "user": user,
        "item": item,
        "completed_at_ms": completed_at_ms,
        "history_id": history_id,
    })
    .to_string()
}

/// The engine's whole view of durable state. Methods block on I/O: call them from the auth,
/// ledger and webhook threads (or the CLI), never from an I/O worker. One value per thread:
/// a backend need not be `Sync`.
pub trait Storage: Send {
    /// The data directory, absolute: the content store, `secret`, `admin-token` and local state
    /// such as `demo-credentials` live there, whatever the backend.
    fn data_dir(&self) -> &Path;

    /// The content store directory, `<data>/store`, where [`crate::catalog::import_file`] puts
    /// blobs and where [`Storage::add_item`] checks that they are.
    fn content_dir(&self) -> PathBuf {
        self.data_dir().join("store")
    }

    // --- users ---

    /// Adds a user. Fails with [`StoreError::UserExists`] when the name is taken,
    /// [`StoreError::InvalidId`] when it is not a [`valid_id`].
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        rate: Option<Rate>,
    ) -> Result<(), StoreError>;
    /// Sets a user's rate (`None`: the server's default).
    fn set_user_rate(&self, name: &str, rate: Option<Rate>) -> Result<(), StoreError>;
    /// Replaces a user's password hash.
    fn set_user_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError>;
    /// One user, or `None`.
    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// All users, by name.
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;

    // --- catalog ---

    /// Adds an item made of blobs already in the content store (checked by [`check_item`]).
    fn add_item(&self, id: &str, kind: ItemKind, parts: &[Blob]) -> Result<(), StoreError> {
        self.add_named_item(id, kind, None, parts)
    }
    /// As [`Storage::add_item`], with a display name (checked by [`check_display_name`]).
    fn add_named_item(
        &self,
        id: &str,
        kind: ItemKind,
        name: Option<&str>,
        parts: &[Blob],
    ) -> Result<(), StoreError>;
    /// One item with its parts in order, or `None`.
    fn item(&self, id: &str) -> Result<Option<Item>, StoreError>;
    /// All items with their parts, by id.
    fn items(&self) -> Result<Vec<Item>, StoreError>;

    // --- carts and history ---

    /// Puts an item in a user's cart (already there: nothing changes, the first time is kept).
    fn cart_add(&self, user: &str, item: &str) -> Result<(), StoreError>;
    /// Takes an item out of a user's cart; whether it was there.
    fn cart_remove(&self, user: &str, item: &str) -> Result<bool, StoreError>;
    /// Whether the item is in the user's cart: what authorizes a download.
    fn cart_contains(&self, user: &str, item: &str) -> Result<bool, StoreError>;
    /// The `added_at` of the cart row (user, item): the purchase credits count for.
    fn cart_added_at(&self, user: &str, item: &str) -> Result<Option<i64>, StoreError>;
    /// A user's cart, oldest first.
    fn cart_list(&self, user: &str) -> Result<Vec<CartEntry>, StoreError>;
    /// A user's completed downloads, oldest first.
    fn history_list(&self, user: &str) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Whether `user` completed `item` at or after `since_ms` (unix ms): the grace period in
    /// which a download manager's last connections may still fetch ranges of a completed item.
    fn recently_completed(&self, user: &str, item: &str, since_ms: u64)
        -> Result<bool, StoreError>;
    /// Content bytes of `item` journaled as delivered to `user` for the purchase now in the cart
    /// (0 before the first journal flush, or when the item is not in the cart).
    fn delivered_bytes(&self, user: &str, item: &str) -> Result<u64, StoreError>;

    // --- the completion ledger's journal ---

    /// Every journaled part of (user, item), whatever purchase it belongs to.
    fn progress(&self, user: &str, item: &str) -> Result<Vec<ProgressRow>, StoreError>;
    /// Journals these parts in one transaction (replacing the part's previous row); the number
    /// of rows written.
    fn save_progress(&self, rows: &[ProgressWrite<'_>]) -> Result<usize, StoreError>;
    /// Forgets the journaled progress of (user, item).
    fn delete_progress(&self, user: &str, item: &str) -> Result<(), StoreError>;
    /// Deletes progress whose purchase is no longer in a cart; the number of rows deleted.
    fn delete_ended_progress(&self) -> Result<usize, StoreError>;
    /// The purchases with journaled progress.
    fn journaled_purchases(&self) -> Result<Vec<JournaledPurchase>, StoreError>;
    /// Records a completion atomically and durably: removes the cart row *of this purchase*,
    /// appends a history row and a `completed` event, queues the webhook event when
    /// `notify`, and deletes the purchase's progress. `Ok(None)`: the purchase's cart row was
    /// gone, nothing was recorded (its progress was still deleted). So a purchase completes at
    /// most once.
    fn commit_completion(&self, c: &Completion<'_>) -> Result<Option<Completed>, StoreError>;

    // --- the webhook outbox ---

    /// Events due at `now_ms`, earliest due first, at most `limit`.
    fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// The event was delivered: removes it.
    fn outbox_ack(&self, id: i64) -> Result<(), StoreError>;
    /// The event failed its `attempts`-th time: due again at `next_at_ms`.
    fn outbox_retry(&self, id: i64, attempts: u32, next_at_ms: u64) -> Result<(), StoreError>;
    /// When the earliest queued event is due, if any.
    fn outbox_next_due(&self) -> Result<Option<u64>, StoreError>;
    /// Number of queued events.
    fn outbox_len(&self) -> Result<u64, StoreError>;
}

/// Checks an item before any backend stores it: a valid id not ending in `.zip`; a file has
/// exactly one part, an album one or more tracks with distinct plain file names; every part is
/// intact in `content_dir`.
pub fn check_item(
    content_dir: &Path,
    id: &str,
    kind: ItemKind,
    parts: &[Blob],
) -> Result<(), StoreError> {
    if !valid_id(id) {
        return Err(StoreError::InvalidId(id.to_owned()));
    }
    let invalid = |reason: String| StoreError::InvalidItem {
        id: id.to_owned(),
        reason,
    };
    if id.ends_with(".zip") {
        // `/d/{album}.zip` is the album's zip: an item may not take that URL.
        return Err(invalid(
            "ids ending in .zip are reserved for album zips".into(),
        ));
    }
    match (kind, parts.len()) {
        (ItemKind::File, 1) | (ItemKind::Album, 1..) => {}
        (ItemKind::File, n) => return Err(invalid(format!("a file has one part, not {n}"))),
        (ItemKind::Album, _) => return Err(invalid("an album needs at least one track".into())),
    }
    let mut names = HashSet::new();
    for p in parts {
        if p.name.is_empty()
            || p.name.len() > 255
            || p.name.contains(['/', '\0'])
            || p.name == "."
            || p.name == ".."
        {
            return Err(invalid(format!("{:?} is not a plain file name", p.name)));
        }
        if !names.insert(p.name.as_str()) {
            return Err(invalid(format!("two tracks are named {:?}", p.name)));
        }
        if !is_sha256_hex(&p.sha256) {
            return Err(invalid(format!("{:?} is not a SHA-256", p.sha256)));
        }
        let on_disk = fs::metadata(crate::catalog::blob_path(content_dir, &p.sha256));
        if !on_disk.is_ok_and(|m| m.is_file() && m.len() == p.size) {
            return Err(StoreError::MissingBlob(p.sha256.clone()));
        }
    }
    Ok(())
}

/// Checks an item's display name: what a browser saves the download as, so a plain file name
/// of 1 to 255 bytes: no `/`, no control character, not `.` or `..`. Any other character,
/// non-ASCII ones included, is kept (`Content-Disposition` carries it in UTF-8).
pub fn check_display_name(id: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 255
        || name.contains('/')
        || name.chars().any(char::is_control)
        || name == "."
        || name == ".."
    {
        return Err(StoreError::InvalidItem {
            id: id.to_owned(),
            reason: format!(
                "{name:?} is not a usable name: 1-255 bytes, no '/' or control characters"
            ),
        });
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes `contents` to `path` with mode 0600 unless `path` exists, atomically: the file appears
/// complete or not at all, and of two processes racing, one wins and the other keeps its file.
pub(crate) fn create_private_file(path: &Path, contents: &[u8]) -> Result<bool, StoreError> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        // A hard link fails if the target exists, unlike rename.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let created = result.map_err(io_err(path))?;
    if created {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for ok in [
            "a",
            "A1",
            "demo-64m",
            "alice@example.com",
            "x.y_z",
            &"a".repeat(128),
        ] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "_x",
            "@x",
            "a/b",
            "a b",
            "é",
            "a%20",
            &"a".repeat(129),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn private_file_is_created_once() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        assert!(create_private_file(&p, b"one").unwrap());
        assert!(!create_private_file(&p, b"two").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn key_and_payload() {
        assert_eq!(idempotency_key(42), "weir-completion-42");
        let p: serde_json::Value =
            serde_json::from_str(&webhook_payload("alice", "album-1", 1_700_000_000_000, 42))
                .unwrap();
        assert_eq!(
            p,
            serde_json::json!({
                "event": "item.completed",
                "user": "alice",
                "item": "album-1",
                "completed_at_ms": 1_700_000_000_000u64,
                "history_id": 42,
            })
        );
    }
}
