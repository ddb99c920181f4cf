//! The data directory and its SQLite database: users, the catalog, carts and history.
//!
//! Layout of a data directory (created by [`Store::open`] when missing, mode 0700):
//!
//! | path | what |
//! |---|---|
//! | `weir.db` (+ `-wal`, `-shm`) | SQLite in WAL mode; schema below |
//! | `store/<sha256hex>` | the immutable content store (see [`crate::catalog`]) |
//! | `secret` | 32 random bytes as hex, mode 0600: the key of signed links ([`crate::token`]) |
//! | `admin-token` | 32 random hex characters, mode 0600: the admin listener's bearer token |
//! | `demo-credentials` | only on a demo data directory (see [`crate::demo`]) |
//!
//! The schema is created and migrated on open, tracked by `PRAGMA user_version`
//! ([`SCHEMA_VERSION`]). Timestamps are unix milliseconds unless a column says otherwise.
//! `synchronous = FULL`: a committed transaction survives power loss. Every connection waits up
//! to 5 s for a lock held by another (`busy_timeout`). These calls block on disk: the server runs
//! them on its auth and journal threads, never on an I/O worker.
//!
//! User names and item ids share one alphabet, checked by [`valid_id`].

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use weir_shaper::Rate;

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
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

/// Why a store operation failed. Variants a caller can act on name the condition.
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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether `s` is a valid item id or user name: `^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`.
///
/// The same alphabet as signed links ([`crate::token::valid_field`]), so ids and names appear in
/// URLs and queries without escaping; the first character may not be punctuation, so no id is
/// `.` or `..` or looks like an option.
pub fn valid_id(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) && crate::token::valid_field(s)
}

/// One immutable file in the content store, as a part of an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// SHA-256 of the bytes, lowercase hex; also the file's name in the content store.
    pub sha256: String,
    pub size: u64,
    /// CRC-32 (IEEE), computed at import for zip entries.
    pub crc32: u32,
    /// The original file name (a track's name inside an album's zip).
    pub name: String,
    /// The original file's modification time, unix seconds.
    pub mtime: u64,
    /// Absolute path in the content store.
    pub path: PathBuf,
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

/// A data directory and an open connection to its database. Not `Sync`: open one per thread.
pub struct Store {
    conn: Connection,
    data_dir: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

fn parse_rate(user: &str, s: Option<String>) -> Result<Option<Rate>, StoreError> {
    s.map(|s| {
        s.parse::<Rate>()
            .map_err(|e| StoreError::Corrupt(format!("rate {s:?} of user {user:?}: {e}")))
    })
    .transpose()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Store {
    /// Opens the data directory, creating it, the database, `secret` and `admin-token` if missing,
    /// and migrating the schema.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io_err(data_dir))?;
        let data_dir = data_dir.canonicalize().map_err(io_err(data_dir))?;
        let content = data_dir.join("store");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&content)
            .map_err(io_err(&content))?;

        let mut conn = Connection::open(data_dir.join("weir.db"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "cannot switch the database to WAL mode (still {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;

        create_private_file(
            &data_dir.join("secret"),
            hex::encode(rand::random::<[u8; 32]>()).as_bytes(),
        )?;
        create_private_file(
            &data_dir.join("admin-token"),
            hex::encode(rand::random::<[u8; 16]>()).as_bytes(),
        )?;
        Ok(Store { conn, data_dir })
    }

    /// The data directory, absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The content store directory, `<data>/store`, where [`crate::catalog::import_file`] puts blobs.
    pub fn content_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The signed-link key: the hex in `<data>/secret`, decoded (at least 16 bytes). The shop may
    /// replace the file with its own secret.
    pub fn secret(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.data_dir.join("secret");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let bad = |reason: &str| StoreError::BadSecretFile {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let key = hex::decode(text.trim()).map_err(|_| bad("not hex"))?;
        if key.len() < 16 {
            return Err(bad("shorter than 16 bytes"));
        }
        Ok(key)
    }

    /// The admin listener's bearer token, from `<data>/admin-token`.
    pub fn admin_token(&self) -> Result<String, StoreError> {
        let path = self.data_dir.join("admin-token");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(StoreError::BadSecretFile {
                path,
                reason: "empty".into(),
            });
        }
        Ok(token.to_owned())
    }

    /// Adds a user. Fails with [`StoreError::UserExists`] when the name is taken.
    pub fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        rate: Option<Rate>,
    ) -> Result<(), StoreError> {
        if !valid_id(name) {
            return Err(StoreError::InvalidId(name.to_owned()));
        }
        let n = self.conn.execute(
            "INSERT INTO users (name, password_hash, rate, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![name, password_hash, rate.map(|r| r.to_string()), now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::UserExists(name.to_owned()));
        }
        Ok(())
    }

    /// Sets a user's rate (`None`: the server's default).
    pub fn set_user_rate(&self, name: &str, rate: Option<Rate>) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE users SET rate = ?2 WHERE name = ?1",
            params![name, rate.map(|r| r.to_string())],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    /// Replaces a user's password hash.
    pub fn set_user_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    /// One user, or `None`.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT password_hash, rate FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()?;
        row.map(|(password_hash, rate)| {
            Ok(UserRecord {
                name: name.to_owned(),
                password_hash,
                rate: parse_rate(name, rate)?,
            })
        })
        .transpose()
    }

    /// All users, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, password_hash, rate FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (name, password_hash, rate) = row?;
            let rate = parse_rate(&name, rate)?;
            Ok(UserRecord {
                name,
                password_hash,
                rate,
            })
        })
        .collect()
    }

    /// Adds an item made of blobs already in the content store. A file has exactly one part; an
    /// album one or more tracks with distinct names. Part names must be plain file names.
    pub fn add_item(&self, id: &str, kind: ItemKind, parts: &[Blob]) -> Result<(), StoreError> {
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
            (ItemKind::Album, _) => {
                return Err(invalid("an album needs at least one track".into()))
            }
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
            let on_disk = fs::metadata(self.content_dir().join(&p.sha256));
            if !on_disk.is_ok_and(|m| m.is_file() && m.len() == p.size) {
                return Err(StoreError::MissingBlob(p.sha256.clone()));
            }
        }

        let tx = self.write_tx()?;
        let now = now_ms();
        let n = tx.execute(
            "INSERT INTO items (id, kind, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![id, kind.as_str(), now],
        )?;
        if n == 0 {
            return Err(StoreError::ItemExists(id.to_owned()));
        }
        for (i, p) in parts.iter().enumerate() {
            tx.execute(
                "INSERT INTO blobs (sha256, size, crc32, imported_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sha256) DO NOTHING",
                params![p.sha256, p.size, p.crc32, now],
            )?;
            tx.execute(
                "INSERT INTO item_blobs (item, n, sha256, name, size, crc32, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, i + 1, p.sha256, p.name, p.size, p.crc32, p.mtime],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn part_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Blob> {
        let sha256: String = r.get("sha256")?;
        Ok(Blob {
            path: self.content_dir().join(&sha256),
            sha256,
            size: r.get("size")?,
            crc32: r.get("crc32")?,
            name: r.get("name")?,
            mtime: r.get("mtime")?,
        })
    }

    fn kind_from(id: &str, kind: &str) -> Result<ItemKind, StoreError> {
        kind.parse()
            .map_err(|e| StoreError::Corrupt(format!("item {id:?}: {e}")))
    }

    /// One item with its parts in order, or `None`.
    pub fn item(&self, id: &str) -> Result<Option<Item>, StoreError> {
        let Some(kind) = self
            .conn
            .query_row("SELECT kind FROM items WHERE id = ?1", [id], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        else {
            return Ok(None);
        };
        let kind = Self::kind_from(id, &kind)?;
        let mut stmt = self.conn.prepare(
            "SELECT sha256, size, crc32, name, mtime FROM item_blobs WHERE item = ?1 ORDER BY n",
        )?;
        let parts = stmt
            .query_map([id], |r| self.part_from_row(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Item {
            id: id.to_owned(),
            kind,
            parts,
        }))
    }

    /// All items with their parts, by id.
    pub fn items(&self) -> Result<Vec<Item>, StoreError> {
        let mut parts: BTreeMap<String, Vec<Blob>> = BTreeMap::new();
        let mut stmt = self.conn.prepare(
            "SELECT item, sha256, size, crc32, name, mtime FROM item_blobs ORDER BY item, n",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            parts
                .entry(r.get("item")?)
                .or_default()
                .push(self.part_from_row(r)?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT id, kind FROM items ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (id, kind) = row?;
            let kind = Self::kind_from(&id, &kind)?;
            let parts = parts.remove(&id).unwrap_or_default();
            Ok(Item { id, kind, parts })
        })
        .collect()
    }

    /// A write transaction that takes the write lock up front, so a read inside it can never be
    /// invalidated by another writer (which would fail with SQLITE_BUSY despite the timeout).
    fn write_tx(&self) -> Result<Transaction<'_>, StoreError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    fn user_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?)
    }

    fn item_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM items WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?)
    }

    /// Puts an item in a user's cart (already there: nothing changes, the first time is kept).
    pub fn cart_add(&self, user: &str, item: &str) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        if !self.user_exists(user)? {
            return Err(StoreError::UnknownUser(user.to_owned()));
        }
        if !self.item_exists(item)? {
            return Err(StoreError::UnknownItem(item.to_owned()));
        }
        tx.execute(
            "INSERT INTO cart (user, item, added_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, item) DO NOTHING",
            params![user, item, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes an item out of a user's cart; whether it was there.
    pub fn cart_remove(&self, user: &str, item: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM cart WHERE user = ?1 AND item = ?2",
            params![user, item],
        )?;
        Ok(n > 0)
    }

    /// Whether the item is in the user's cart: what authorizes a download.
    pub fn cart_contains(&self, user: &str, item: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM cart WHERE user = ?1 AND item = ?2)",
            params![user, item],
            |r| r.get(0),
        )?)
    }

    /// A user's cart, oldest first.
    pub fn cart_list(&self, user: &str) -> Result<Vec<CartEntry>, StoreError> {
        if !self.user_exists(user)? {
            return Err(StoreError::UnknownUser(user.to_owned()));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT item, added_at FROM cart WHERE user = ?1 ORDER BY added_at, item")?;
        let rows = stmt.query_map([user], |r| {
            Ok(CartEntry {
                item: r.get(0)?,
                added_at_ms: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A user's completed downloads, oldest first.
    pub fn history_list(&self, user: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        if !self.user_exists(user)? {
            return Err(StoreError::UnknownUser(user.to_owned()));
        }
        let mut stmt = self.conn.prepare(
            "SELECT item, completed_at FROM history WHERE user = ?1 ORDER BY completed_at, id",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok(HistoryEntry {
                item: r.get(0)?,
                completed_at_ms: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Content bytes of `item` the ledger has journaled as delivered to `user` for the purchase
    /// now in the cart (0 before the first journal flush, or when the item is not in the cart).
    pub fn delivered_bytes(&self, user: &str, item: &str) -> Result<u64, StoreError> {
        let rows = self.conn.prepare(
            "SELECT p.intervals FROM progress p JOIN cart c
               ON c.user = p.user AND c.item = p.item AND c.added_at = p.cart_added_at
             WHERE p.user = ?1 AND p.item = ?2",
        );
        let mut stmt = match rows {
            Ok(stmt) => stmt,
            // The ledger creates its journal on first start; before that nothing was delivered.
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                return Ok(0)
            }
            Err(e) => return Err(e.into()),
        };
        let blobs = stmt.query_map(params![user, item], |r| r.get::<_, Vec<u8>>(0))?;
        let mut total = 0;
        for blob in blobs {
            let set = crate::completion::IntervalSet::from_bytes(&blob?)
                .map_err(|e| StoreError::Corrupt(format!("progress of {user}/{item}: {e}")))?;
            total += set.covered();
        }
        Ok(total)
    }

    /// Whether `user` completed `item` at or after `since_ms` (unix ms): the grace period in which
    /// a download manager's last connections may still fetch ranges of a completed item.
    pub fn recently_completed(
        &self,
        user: &str,
        item: &str,
        since_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM history
                            WHERE user = ?1 AND item = ?2 AND completed_at >= ?3)",
            params![user, item, since_ms],
            |r| r.get(0),
        )?)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] inside one immediate transaction, so two processes
/// opening a fresh directory at once do not both create it.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    // Later versions: `if version < 2 { ... }`, each step in this same transaction.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn open() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        (tmp, store)
    }

    fn blob(store: &Store, name: &str, bytes: &[u8]) -> Blob {
        let src = store.data_dir().join(name);
        fs::write(&src, bytes).unwrap();
        let b = crate::catalog::import_file(&store.content_dir(), &src).unwrap();
        fs::remove_file(src).unwrap();
        b
    }

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
    fn open_creates_layout_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/data");
        let store = Store::open(&dir).unwrap();
        assert!(store.data_dir().is_absolute());
        assert!(dir.join("weir.db").is_file());
        assert!(dir.join("store").is_dir());
        for f in ["secret", "admin-token"] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let secret = store.secret().unwrap();
        assert_eq!(secret.len(), 32);
        let token = store.admin_token().unwrap();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        store.add_user("u", "h", None).unwrap();
        drop(store);

        // Reopening keeps the data and the secrets.
        let again = Store::open(&dir).unwrap();
        assert_eq!(again.secret().unwrap(), secret);
        assert_eq!(again.admin_token().unwrap(), token);
        assert_eq!(again.users().unwrap().len(), 1);
        let v: i64 = again
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let (tmp, store) = open();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&tmp.path().join("data")),
            Err(StoreError::NewerSchema { .. })
        ));
    }

    #[test]
    fn users() {
        let (_tmp, store) = open();
        let two = Rate::BytesPerSec(2 << 20);
        store.add_user("bob", "hash-b", Some(two)).unwrap();
        store.add_user("alice", "hash-a", None).unwrap();
        assert!(matches!(
            store.add_user("bob", "x", None),
            Err(StoreError::UserExists(_))
        ));
        assert!(matches!(
            store.add_user("no/slash", "x", None),
            Err(StoreError::InvalidId(_))
        ));
        let bob = store.user("bob").unwrap().unwrap();
        assert_eq!(bob.rate, Some(two));
        assert_eq!(bob.password_hash, "hash-b");
        assert_eq!(store.user("carol").unwrap(), None);

        store.set_user_rate("alice", Some(Rate::Unlimited)).unwrap();
        store.set_user_rate("bob", None).unwrap();
        store.set_user_password("bob", "hash-b2").unwrap();
        assert!(matches!(
            store.set_user_rate("carol", None),
            Err(StoreError::UnknownUser(_))
        ));
        assert!(matches!(
            store.set_user_password("carol", "h"),
            Err(StoreError::UnknownUser(_))
        ));
        let all = store.users().unwrap();
        assert_eq!(
            all,
            vec![
                UserRecord {
                    name: "alice".into(),
                    password_hash: "hash-a".into(),
                    rate: Some(Rate::Unlimited)
                },
                UserRecord {
                    name: "bob".into(),
                    password_hash: "hash-b2".into(),
                    rate: None
                },
            ]
        );
    }

    #[test]
    fn items_files_and_albums() {
        let (_tmp, store) = open();
        let f = blob(&store, "movie.mkv", b"movie bytes");
        let t1 = blob(&store, "01 intro.flac", b"track one");
        let t2 = blob(&store, "02 outro.flac", b"track two!");
        store
            .add_item("movie", ItemKind::File, std::slice::from_ref(&f))
            .unwrap();
        store
            .add_item("album", ItemKind::Album, &[t2.clone(), t1.clone()])
            .unwrap();
        // The same blob may belong to several items.
        store
            .add_item("movie-copy", ItemKind::File, std::slice::from_ref(&f))
            .unwrap();

        let movie = store.item("movie").unwrap().unwrap();
        assert_eq!(movie.kind, ItemKind::File);
        assert_eq!(movie.parts, vec![f.clone()]);
        let album = store.item("album").unwrap().unwrap();
        assert_eq!(album.kind, ItemKind::Album);
        assert_eq!(album.parts, vec![t2.clone(), t1.clone()], "order is kept");
        assert_eq!(album.size(), 19);
        assert!(album.parts[0].path.is_absolute());
        assert_eq!(store.item("nope").unwrap(), None);
        let ids: Vec<_> = store.items().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["album", "movie", "movie-copy"]);
        assert_eq!(store.items().unwrap()[0], album);

        let err = |r: Result<(), StoreError>| r.unwrap_err();
        assert!(matches!(
            err(store.add_item("movie", ItemKind::File, std::slice::from_ref(&f))),
            StoreError::ItemExists(_)
        ));
        assert!(matches!(
            err(store.add_item("../x", ItemKind::File, std::slice::from_ref(&f))),
            StoreError::InvalidId(_)
        ));
        assert!(matches!(
            err(store.add_item("two", ItemKind::File, &[f.clone(), t1.clone()])),
            StoreError::InvalidItem { .. }
        ));
        assert!(matches!(
            err(store.add_item("empty", ItemKind::Album, &[])),
            StoreError::InvalidItem { .. }
        ));
        assert!(matches!(
            err(store.add_item("dup", ItemKind::Album, &[t1.clone(), t1.clone()])),
            StoreError::InvalidItem { .. }
        ));
        let mut missing = f.clone();
        missing.sha256 = "0".repeat(64);
        assert!(matches!(
            err(store.add_item("missing", ItemKind::File, &[missing])),
            StoreError::MissingBlob(_)
        ));
        let mut slash = f.clone();
        slash.name = "a/b".into();
        assert!(matches!(
            err(store.add_item("slash", ItemKind::File, &[slash])),
            StoreError::InvalidItem { .. }
        ));
        // Failed adds left nothing behind.
        assert_eq!(store.items().unwrap().len(), 3);
    }

    #[test]
    fn carts() {
        let (_tmp, store) = open();
        let f = blob(&store, "f", b"x");
        store
            .add_item("a", ItemKind::File, std::slice::from_ref(&f))
            .unwrap();
        store.add_item("b", ItemKind::File, &[f]).unwrap();
        store.add_user("alice", "h", None).unwrap();
        store.add_user("bob", "h", None).unwrap();

        store.cart_add("alice", "b").unwrap();
        store.cart_add("alice", "a").unwrap();
        store.cart_add("alice", "a").unwrap();
        assert!(matches!(
            store.cart_add("carol", "a"),
            Err(StoreError::UnknownUser(_))
        ));
        assert!(matches!(
            store.cart_add("alice", "zzz"),
            Err(StoreError::UnknownItem(_))
        ));
        assert!(store.cart_contains("alice", "a").unwrap());
        assert!(
            !store.cart_contains("bob", "a").unwrap(),
            "carts are per user"
        );
        let items: Vec<_> = store
            .cart_list("alice")
            .unwrap()
            .into_iter()
            .map(|e| e.item)
            .collect();
        assert_eq!(items.len(), 2);
        assert!(items.contains(&"a".to_string()) && items.contains(&"b".to_string()));
        assert!(store.cart_list("bob").unwrap().is_empty());
        assert!(matches!(
            store.cart_list("carol"),
            Err(StoreError::UnknownUser(_))
        ));

        assert!(store.cart_remove("alice", "a").unwrap());
        assert!(!store.cart_remove("alice", "a").unwrap());
        assert!(!store.cart_contains("alice", "a").unwrap());
    }

    #[test]
    fn history_is_listed_per_user() {
        let (_tmp, store) = open();
        store.add_user("alice", "h", None).unwrap();
        store
            .conn
            .execute_batch(
                "INSERT INTO history (user, item, completed_at) VALUES
                   ('alice', 'b', 2000), ('alice', 'a', 1000), ('bob', 'c', 3000);",
            )
            .unwrap();
        assert_eq!(
            store.history_list("alice").unwrap(),
            vec![
                HistoryEntry {
                    item: "a".into(),
                    completed_at_ms: 1000
                },
                HistoryEntry {
                    item: "b".into(),
                    completed_at_ms: 2000
                },
            ]
        );
        assert!(matches!(
            store.history_list("bob"),
            Err(StoreError::UnknownUser(_))
        ));
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
}
