//! The SQLite backend: a data directory and one connection to its `weir.db`.
//!
//! Every SQL statement of weir is in this file (the schema is in [`super::migrations`]). The
//! durability policy is described in the [module docs](super); the one place a connection raises
//! it is [`Storage::commit_completion`].

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use weir_shaper::Rate;

use super::interface::{
    check_display_name, check_item, create_private_file, idempotency_key, io_err, now_ms, valid_id,
    webhook_payload, CartEntry, Completed, Completion, HistoryEntry, Item, ItemKind,
    JournaledPurchase, OutboxEntry, ProgressRow, ProgressWrite, Storage, StoreError, UserRecord,
};
use super::migrations;
use crate::catalog::Blob;
use crate::intervals::IntervalSet;

/// How an ordinary commit of a connection is synced (see the [module docs](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: a commit survives power loss.
    Full,
    /// `synchronous = NORMAL`: a commit survives a crash of the process, not of the machine.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// A data directory and an open connection to its database. Not `Sync`: open one per thread.
pub struct SqliteStore {
    conn: Connection,
    data_dir: PathBuf,
    durability: Durability,
}

fn parse_rate(user: &str, s: Option<String>) -> Result<Option<Rate>, StoreError> {
    s.map(|s| {
        s.parse::<Rate>()
            .map_err(|e| StoreError::Corrupt(format!("rate {s:?} of user {user:?}: {e}")))
    })
    .transpose()
}

fn kind_from(id: &str, kind: &str) -> Result<ItemKind, StoreError> {
    kind.parse()
        .map_err(|e| StoreError::Corrupt(format!("item {id:?}: {e}")))
}

impl SqliteStore {
    /// Opens the data directory with [`Durability::Full`], creating it, the database, `secret`
    /// and `admin-token` if missing, and migrating the schema.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(data_dir, Durability::Full)
    }

    /// [`SqliteStore::open`] with another [`Durability`] for ordinary commits.
    pub fn open_with(data_dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
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
        conn.pragma_update(None, "synchronous", Durability::Full.pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)?;
        conn.pragma_update(None, "synchronous", durability.pragma())?;

        create_private_file(
            &data_dir.join("secret"),
            hex::encode(rand::random::<[u8; 32]>()).as_bytes(),
        )?;
        create_private_file(
            &data_dir.join("admin-token"),
            hex::encode(rand::random::<[u8; 16]>()).as_bytes(),
        )?;
        Ok(SqliteStore {
            conn,
            data_dir,
            durability,
        })
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

    /// A write transaction that takes the write lock up front, so a read inside it can never be
    /// invalidated by another writer (which would fail with SQLITE_BUSY despite the timeout).
    fn write_tx(&self) -> Result<Transaction<'_>, StoreError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    /// Whether the `SELECT EXISTS (...)` query `sql` is true.
    fn exists(&self, sql: &str, params: impl rusqlite::Params) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(sql, params, |r| r.get(0))?)
    }

    fn user_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.exists(
            "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
            [name],
        )
    }

    fn item_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.exists("SELECT EXISTS (SELECT 1 FROM items WHERE id = ?1)", [id])
    }

    fn part_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Blob> {
        let sha256: String = r.get("sha256")?;
        Ok(Blob {
            path: crate::catalog::blob_path(&self.content_dir(), &sha256),
            sha256,
            size: r.get("size")?,
            crc32: r.get("crc32")?,
            name: r.get("name")?,
            mtime: r.get("mtime")?,
        })
    }

    /// The completion transaction of [`Storage::commit_completion`].
    fn completion_tx(&self, c: &Completion<'_>) -> Result<Option<Completed>, StoreError> {
        let (user, item) = (c.user, c.item);
        let tx = self.write_tx()?;
        let removed = tx.execute(
            "DELETE FROM cart WHERE user = ?1 AND item = ?2 AND added_at = ?3",
            params![user, item, c.cart_added_at],
        )?;
        if removed == 0 {
            tx.execute(
                "DELETE FROM progress WHERE user = ?1 AND item = ?2",
                params![user, item],
            )?;
            tx.commit()?;
            return Ok(None);
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO history (user, item, completed_at) VALUES (?1, ?2, ?3)",
            params![user, item, now],
        )?;
        let history_id = tx.last_insert_rowid();
        let event = serde_json::json!({
            "history_id": history_id,
            "completed_at_ms": now,
            "cart_added_at_ms": c.cart_added_at,
            "size": c.size,
            "parts": c.parts,
        });
        tx.execute(
            "INSERT INTO events (kind, user, item, at, payload)
             VALUES ('completed', ?1, ?2, ?3, ?4)",
            params![user, item, now, event.to_string()],
        )?;
        if c.notify {
            tx.execute(
                "INSERT INTO webhook_outbox (idempotency_key, payload, attempts, next_at_ms)
                 VALUES (?1, ?2, 0, ?3)",
                params![
                    idempotency_key(history_id),
                    webhook_payload(user, item, now, history_id),
                    now
                ],
            )?;
        }
        tx.execute(
            "DELETE FROM progress WHERE user = ?1 AND item = ?2",
            params![user, item],
        )?;
        tx.commit()?;
        Ok(Some(Completed {
            history_id,
            completed_at_ms: now,
        }))
    }
}

impl Storage for SqliteStore {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn add_user(
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

    fn set_user_rate(&self, name: &str, rate: Option<Rate>) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE users SET rate = ?2 WHERE name = ?1",
            params![name, rate.map(|r| r.to_string())],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    fn set_user_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
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

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
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

    fn add_named_item(
        &self,
        id: &str,
        kind: ItemKind,
        name: Option<&str>,
        parts: &[Blob],
    ) -> Result<(), StoreError> {
        check_item(&self.content_dir(), id, kind, parts)?;
        if let Some(name) = name {
            check_display_name(id, name)?;
        }
        let tx = self.write_tx()?;
        let now = now_ms();
        let n = tx.execute(
            "INSERT INTO items (id, kind, name, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO NOTHING",
            params![id, kind.as_str(), name, now],
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

    fn item(&self, id: &str) -> Result<Option<Item>, StoreError> {
        let Some((kind, name)) = self
            .conn
            .query_row("SELECT kind, name FROM items WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?
        else {
            return Ok(None);
        };
        let kind = kind_from(id, &kind)?;
        let mut stmt = self.conn.prepare(
            "SELECT sha256, size, crc32, name, mtime FROM item_blobs WHERE item = ?1 ORDER BY n",
        )?;
        let parts = stmt
            .query_map([id], |r| self.part_from_row(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Item {
            id: id.to_owned(),
            kind,
            name,
            parts,
        }))
    }

    fn items(&self) -> Result<Vec<Item>, StoreError> {
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
            .prepare("SELECT id, kind, name FROM items ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (id, kind, name) = row?;
            let kind = kind_from(&id, &kind)?;
            let parts = parts.remove(&id).unwrap_or_default();
            Ok(Item {
                id,
                kind,
                name,
                parts,
            })
        })
        .collect()
    }

    fn cart_add(&self, user: &str, item: &str) -> Result<(), StoreError> {
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

    fn cart_remove(&self, user: &str, item: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM cart WHERE user = ?1 AND item = ?2",
            params![user, item],
        )?;
        Ok(n > 0)
    }

    fn cart_contains(&self, user: &str, item: &str) -> Result<bool, StoreError> {
        self.exists(
            "SELECT EXISTS (SELECT 1 FROM cart WHERE user = ?1 AND item = ?2)",
            params![user, item],
        )
    }

    fn cart_added_at(&self, user: &str, item: &str) -> Result<Option<i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT added_at FROM cart WHERE user = ?1 AND item = ?2")?;
        Ok(stmt
            .query_row(params![user, item], |r| r.get(0))
            .optional()?)
    }

    fn cart_list(&self, user: &str) -> Result<Vec<CartEntry>, StoreError> {
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

    fn history_list(&self, user: &str) -> Result<Vec<HistoryEntry>, StoreError> {
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

    fn recently_completed(
        &self,
        user: &str,
        item: &str,
        since_ms: u64,
    ) -> Result<bool, StoreError> {
        self.exists(
            "SELECT EXISTS (SELECT 1 FROM history
                            WHERE user = ?1 AND item = ?2 AND completed_at >= ?3)",
            params![user, item, since_ms],
        )
    }

    fn delivered_bytes(&self, user: &str, item: &str) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT p.intervals FROM progress p JOIN cart c
               ON c.user = p.user AND c.item = p.item AND c.added_at = p.cart_added_at
             WHERE p.user = ?1 AND p.item = ?2",
        )?;
        let blobs = stmt.query_map(params![user, item], |r| r.get::<_, Vec<u8>>(0))?;
        let mut total = 0;
        for blob in blobs {
            let set = IntervalSet::from_bytes(&blob?)
                .map_err(|e| StoreError::Corrupt(format!("progress of {user}/{item}: {e}")))?;
            total += set.covered();
        }
        Ok(total)
    }

    fn progress(&self, user: &str, item: &str) -> Result<Vec<ProgressRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT cart_added_at, part, intervals FROM progress WHERE user = ?1 AND item = ?2",
        )?;
        let rows = stmt.query_map(params![user, item], |r| {
            Ok(ProgressRow {
                cart_added_at: r.get(0)?,
                part: r.get(1)?,
                intervals: IntervalSet::from_bytes(&r.get::<_, Vec<u8>>(2)?).ok(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn save_progress(&self, rows: &[ProgressWrite<'_>]) -> Result<usize, StoreError> {
        let tx = self.write_tx()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO progress (user, item, cart_added_at, part, intervals)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user, item, part) DO UPDATE
                 SET cart_added_at = excluded.cart_added_at, intervals = excluded.intervals",
            )?;
            for row in rows {
                upsert.execute(params![
                    row.user,
                    row.item,
                    row.cart_added_at,
                    i64::from(row.part),
                    row.intervals.to_bytes()
                ])?;
            }
        }
        tx.commit()?;
        Ok(rows.len())
    }

    fn delete_progress(&self, user: &str, item: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM progress WHERE user = ?1 AND item = ?2",
            params![user, item],
        )?;
        Ok(())
    }

    fn delete_ended_progress(&self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM progress WHERE NOT EXISTS (
                 SELECT 1 FROM cart
                 WHERE cart.user = progress.user AND cart.item = progress.item
                   AND cart.added_at = progress.cart_added_at)",
            [],
        )?)
    }

    fn journaled_purchases(&self) -> Result<Vec<JournaledPurchase>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT user, item, cart_added_at FROM progress")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn commit_completion(&self, c: &Completion<'_>) -> Result<Option<Completed>, StoreError> {
        self.conn
            .pragma_update(None, "synchronous", Durability::Full.pragma())?;
        let outcome = self.completion_tx(c);
        let restored = self
            .conn
            .pragma_update(None, "synchronous", self.durability.pragma());
        let outcome = outcome?;
        restored?;
        Ok(outcome)
    }

    fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, idempotency_key, payload, attempts FROM webhook_outbox
             WHERE next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, limit], |r| {
            Ok(OutboxEntry {
                id: r.get(0)?,
                key: r.get(1)?,
                payload: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn outbox_ack(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM webhook_outbox WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn outbox_retry(&self, id: i64, attempts: u32, next_at_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE webhook_outbox SET attempts = ?2, next_at_ms = ?3 WHERE id = ?1",
            params![id, attempts, next_at_ms],
        )?;
        Ok(())
    }

    fn outbox_next_due(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MIN(next_at_ms) FROM webhook_outbox", [], |r| {
                r.get(0)
            })?)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM webhook_outbox", [], |r| r.get(0))?)
    }
}

/// What tests outside this module inspect or tamper with, without writing SQL themselves.
#[cfg(test)]
impl SqliteStore {
    /// `completed` events recorded for (user, item).
    pub(crate) fn test_completed_events(&self, user: &str, item: &str) -> i64 {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'completed' AND user = ?1 AND item = ?2",
                [user, item],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Rows in the progress journal.
    pub(crate) fn test_progress_rows(&self) -> i64 {
        self.conn
            .query_row("SELECT COUNT(*) FROM progress", [], |r| r.get(0))
            .unwrap()
    }

    /// The id of the latest history row of (user, item).
    pub(crate) fn test_history_id(&self, user: &str, item: &str) -> i64 {
        self.conn
            .query_row(
                "SELECT id FROM history WHERE user = ?1 AND item = ?2 ORDER BY id DESC LIMIT 1",
                [user, item],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Moves the cart row's `added_at` one millisecond on: the item was bought again.
    pub(crate) fn test_rebuy(&self, user: &str, item: &str) {
        self.conn
            .execute(
                "UPDATE cart SET added_at = added_at + 1 WHERE user = ?1 AND item = ?2",
                [user, item],
            )
            .unwrap();
    }

    /// Appends a history row as the ledger would.
    pub(crate) fn test_add_history(&self, user: &str, item: &str, completed_at_ms: u64) {
        self.conn
            .execute(
                "INSERT INTO history (user, item, completed_at) VALUES (?1, ?2, ?3)",
                params![user, item, completed_at_ms],
            )
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::super::migrations::{old, SCHEMA_VERSION};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("data")).unwrap();
        (tmp, store)
    }

    /// The shared suite, once per case, on a fresh data directory each.
    macro_rules! conformance {
        ($($case:ident),* $(,)?) => {
            mod conformance_suite {
                $(
                    #[test]
                    fn $case() {
                        let (_tmp, store) = super::open();
                        super::conformance::$case(&store);
                    }
                )*
            }
        };
    }
    conformance!(
        users,
        items_files_and_albums,
        carts,
        history_and_grace,
        progress_journal,
        completion_exactly_once,
        completion_of_an_ended_purchase,
        outbox_claim_ack_retry,
    );

    #[test]
    fn open_creates_layout_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/data");
        let store = SqliteStore::open(&dir).unwrap();
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
        let again = SqliteStore::open(&dir).unwrap();
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
    fn durability_is_per_connection_and_completion_is_full() {
        let (tmp, full) = open();
        let normal = SqliteStore::open_with(&tmp.path().join("data"), Durability::Normal).unwrap();
        let sync = |s: &SqliteStore| -> i64 {
            s.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(sync(&full), 2, "FULL");
        assert_eq!(sync(&normal), 1, "NORMAL");
        let c = Completion {
            user: "nobody",
            item: "nothing",
            cart_added_at: 0,
            size: 0,
            parts: 0,
            notify: false,
        };
        assert_eq!(normal.commit_completion(&c).unwrap(), None);
        assert_eq!(sync(&normal), 1, "restored after the completion");
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
            SqliteStore::open(&tmp.path().join("data")),
            Err(StoreError::NewerSchema { .. })
        ));
    }

    /// A data directory as the previous release left it: version 1 from `Store::open`, and the
    /// ledger's tables created at run time (`with_ledger`) or not yet (the ledger never ran).
    fn old_data_dir(with_ledger: bool) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir_all(dir.join("store")).unwrap();
        let conn = Connection::open(dir.join("weir.db")).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        conn.execute_batch(old::V1_STORE).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO users (name, password_hash, rate, created_at)
               VALUES ('alice', 'h', NULL, 1);
             INSERT INTO blobs (sha256, size, crc32, imported_at) VALUES (
               'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 10, 7, 1);
             INSERT INTO items (id, kind, created_at) VALUES ('song', 'file', 1);
             INSERT INTO item_blobs (item, n, sha256, name, size, crc32, mtime) VALUES ('song', 1,
               'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 's.flac', 10, 7, 1);
             INSERT INTO cart (user, item, added_at) VALUES ('alice', 'song', 500);
             INSERT INTO history (user, item, completed_at) VALUES ('alice', 'old', 400);",
        )
        .unwrap();
        if with_ledger {
            conn.execute_batch(old::V1_LEDGER).unwrap();
            let mut set = IntervalSet::new();
            set.insert(0..4);
            conn.execute(
                "INSERT INTO progress (user, item, cart_added_at, part, intervals)
                 VALUES ('alice', 'song', 500, 0, ?1)",
                [set.to_bytes()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO webhook_outbox (idempotency_key, payload, attempts, next_at_ms)
                 VALUES ('weir-completion-1', '{}', 3, 0)",
                [],
            )
            .unwrap();
        }
        tmp
    }

    #[test]
    fn an_old_data_directory_migrates_and_keeps_its_data() {
        for with_ledger in [true, false] {
            let tmp = old_data_dir(with_ledger);
            let store = SqliteStore::open(&tmp.path().join("data")).unwrap();
            let v: i64 = store
                .conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, SCHEMA_VERSION);
            assert_eq!(store.user("alice").unwrap().unwrap().password_hash, "h");
            assert_eq!(store.item("song").unwrap().unwrap().size(), 10);
            assert_eq!(store.item("song").unwrap().unwrap().name, None);
            assert_eq!(store.cart_added_at("alice", "song").unwrap(), Some(500));
            assert_eq!(store.history_list("alice").unwrap().len(), 1);
            let (delivered, queued) = if with_ledger { (4, 1) } else { (0, 0) };
            assert_eq!(store.delivered_bytes("alice", "song").unwrap(), delivered);
            assert_eq!(store.outbox_len().unwrap(), queued);
            if with_ledger {
                let due = store.outbox_due(now_ms(), 10).unwrap();
                assert_eq!(due[0].key, "weir-completion-1");
                assert_eq!(due[0].attempts, 3);
            }
            // The new tables work on the migrated database.
            let c = Completion {
                user: "alice",
                item: "song",
                cart_added_at: 500,
                size: 10,
                parts: 1,
                notify: true,
            };
            assert!(store.commit_completion(&c).unwrap().is_some());
            assert_eq!(store.outbox_len().unwrap(), queued + 1);
            drop(store);
            // And reopening the migrated directory is a no-op.
            let again = SqliteStore::open(&tmp.path().join("data")).unwrap();
            assert_eq!(again.history_list("alice").unwrap().len(), 2);
        }
    }

    #[test]
    fn history_is_listed_per_user() {
        let (_tmp, store) = open();
        store.add_user("alice", "h", None).unwrap();
        store.test_add_history("alice", "b", 2000);
        store.test_add_history("alice", "a", 1000);
        store.test_add_history("bob", "c", 3000);
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
}
