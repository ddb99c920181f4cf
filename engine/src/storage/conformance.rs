//! The behaviour every [`Storage`] backend must have, written once against the trait.
//!
//! Each case takes a fresh, empty backend (its own data directory). A backend's tests run every
//! case; see the `conformance!` list in [`super::sqlite`]'s tests, which a second backend copies
//! with its own constructor.

use std::path::Path;

use weir_shaper::Rate;

use super::interface::{
    idempotency_key, now_ms, webhook_payload, Completion, ItemKind, ProgressRow, ProgressWrite,
    Storage, StoreError, UserRecord,
};
use crate::catalog::Blob;
use crate::intervals::IntervalSet;

/// Imports `bytes` as a blob named `name` into the backend's content store.
fn blob(s: &dyn Storage, name: &str, bytes: &[u8]) -> Blob {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join(name);
    std::fs::write(&src, bytes).unwrap();
    crate::catalog::import_file(&s.content_dir(), &src).unwrap()
}

/// A user `alice` with the files `a` (10 bytes) and `b` (20 bytes) in her cart.
fn shop(s: &dyn Storage) {
    s.add_user("alice", "h", None).unwrap();
    s.add_user("bob", "h", None).unwrap();
    for (id, len) in [("a", 10), ("b", 20)] {
        let b = blob(s, &format!("{id}.bin"), &vec![id.as_bytes()[0]; len]);
        s.add_item(id, ItemKind::File, &[b]).unwrap();
        s.cart_add("alice", id).unwrap();
    }
}

/// A set of `(start, end)` intervals.
fn set(ranges: &[(u64, u64)]) -> IntervalSet {
    let mut s = IntervalSet::new();
    for &(start, end) in ranges {
        s.insert(start..end);
    }
    s
}

/// Journals `intervals` as part 0 of alice's purchase of `item` made at `cart_added_at`.
fn journal(s: &dyn Storage, item: &str, cart_added_at: i64, intervals: &IntervalSet) {
    let row = ProgressWrite {
        user: "alice",
        item,
        cart_added_at,
        part: 0,
        intervals,
    };
    assert_eq!(s.save_progress(&[row]).unwrap(), 1);
}

fn completion<'a>(user: &'a str, item: &'a str, cart_added_at: i64) -> Completion<'a> {
    Completion {
        user,
        item,
        cart_added_at,
        size: 10,
        parts: 1,
        notify: true,
    }
}

pub(crate) fn users(s: &dyn Storage) {
    let two = Rate::BytesPerSec(2 << 20);
    s.add_user("bob", "hash-b", Some(two)).unwrap();
    s.add_user("alice", "hash-a", None).unwrap();
    assert!(matches!(
        s.add_user("bob", "x", None),
        Err(StoreError::UserExists(_))
    ));
    assert!(matches!(
        s.add_user("no/slash", "x", None),
        Err(StoreError::InvalidId(_))
    ));
    let bob = s.user("bob").unwrap().unwrap();
    assert_eq!(bob.rate, Some(two));
    assert_eq!(bob.password_hash, "hash-b");
    assert_eq!(s.user("carol").unwrap(), None);

    s.set_user_rate("alice", Some(Rate::Unlimited)).unwrap();
    s.set_user_rate("bob", None).unwrap();
    s.set_user_password("bob", "hash-b2").unwrap();
    assert!(matches!(
        s.set_user_rate("carol", None),
        Err(StoreError::UnknownUser(_))
    ));
    assert!(matches!(
        s.set_user_password("carol", "h"),
        Err(StoreError::UnknownUser(_))
    ));
    assert_eq!(
        s.users().unwrap(),
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

pub(crate) fn items_files_and_albums(s: &dyn Storage) {
    let f = blob(s, "movie.mkv", b"movie bytes");
    let t1 = blob(s, "01 intro.flac", b"track one");
    let t2 = blob(s, "02 outro.flac", b"track two!");
    s.add_item("movie", ItemKind::File, std::slice::from_ref(&f))
        .unwrap();
    s.add_item("album", ItemKind::Album, &[t2.clone(), t1.clone()])
        .unwrap();
    // The same blob may belong to several items.
    s.add_item("movie-copy", ItemKind::File, std::slice::from_ref(&f))
        .unwrap();

    let movie = s.item("movie").unwrap().unwrap();
    assert_eq!(movie.kind, ItemKind::File);
    assert_eq!(movie.parts, vec![f.clone()]);
    let album = s.item("album").unwrap().unwrap();
    assert_eq!(album.kind, ItemKind::Album);
    assert_eq!(album.parts, vec![t2.clone(), t1.clone()], "order is kept");
    assert_eq!(album.size(), 19);
    assert!(album.parts[0].path.is_absolute());
    assert_eq!(s.item("nope").unwrap(), None);
    let ids: Vec<_> = s.items().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["album", "movie", "movie-copy"]);
    assert_eq!(s.items().unwrap()[0], album);
    assert_eq!(movie.name, None, "no --name: no display name");

    // A display name is kept as given, non-ASCII and quotes included; a path or a control
    // character is refused.
    let named = "Björk – \"Jóga\" (live).mkv";
    s.add_named_item(
        "named",
        ItemKind::File,
        Some(named),
        std::slice::from_ref(&f),
    )
    .unwrap();
    assert_eq!(
        s.item("named").unwrap().unwrap().name.as_deref(),
        Some(named)
    );
    let listed = s.items().unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|i| i.id == "named")
            .unwrap()
            .name
            .as_deref(),
        Some(named)
    );
    for bad in ["", "a/b", "a\nb", "..", &"x".repeat(256)] {
        let r = s.add_named_item(
            "bad-name",
            ItemKind::File,
            Some(bad),
            std::slice::from_ref(&f),
        );
        assert!(
            matches!(r, Err(StoreError::InvalidItem { .. })),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(s.item("bad-name").unwrap(), None);

    let err = |r: Result<(), StoreError>| r.unwrap_err();
    let one = std::slice::from_ref(&f);
    assert!(matches!(
        err(s.add_item("movie", ItemKind::File, one)),
        StoreError::ItemExists(_)
    ));
    assert!(matches!(
        err(s.add_item("../x", ItemKind::File, one)),
        StoreError::InvalidId(_)
    ));
    assert!(matches!(
        err(s.add_item("x.zip", ItemKind::File, one)),
        StoreError::InvalidItem { .. }
    ));
    assert!(matches!(
        err(s.add_item("two", ItemKind::File, &[f.clone(), t1.clone()])),
        StoreError::InvalidItem { .. }
    ));
    assert!(matches!(
        err(s.add_item("empty", ItemKind::Album, &[])),
        StoreError::InvalidItem { .. }
    ));
    assert!(matches!(
        err(s.add_item("dup", ItemKind::Album, &[t1.clone(), t1.clone()])),
        StoreError::InvalidItem { .. }
    ));
    let mut missing = f.clone();
    missing.sha256 = "0".repeat(64);
    assert!(matches!(
        err(s.add_item("missing", ItemKind::File, &[missing])),
        StoreError::MissingBlob(_)
    ));
    let mut slash = f.clone();
    slash.name = "a/b".into();
    assert!(matches!(
        err(s.add_item("slash", ItemKind::File, &[slash])),
        StoreError::InvalidItem { .. }
    ));
    // Failed adds left nothing behind.
    assert_eq!(
        s.items().unwrap().len(),
        4,
        "movie, movie-copy, album, named"
    );
    assert!(Path::new(&album.parts[1].path).is_file());
}

pub(crate) fn carts(s: &dyn Storage) {
    let f = blob(s, "f", b"x");
    s.add_item("a", ItemKind::File, std::slice::from_ref(&f))
        .unwrap();
    s.add_item("b", ItemKind::File, &[f]).unwrap();
    s.add_user("alice", "h", None).unwrap();
    s.add_user("bob", "h", None).unwrap();

    let before = now_ms() as i64;
    s.cart_add("alice", "b").unwrap();
    s.cart_add("alice", "a").unwrap();
    let added_at = s.cart_added_at("alice", "a").unwrap().unwrap();
    assert!(added_at >= before);
    s.cart_add("alice", "a").unwrap();
    assert_eq!(
        s.cart_added_at("alice", "a").unwrap(),
        Some(added_at),
        "adding again keeps the first time"
    );
    assert!(matches!(
        s.cart_add("carol", "a"),
        Err(StoreError::UnknownUser(_))
    ));
    assert!(matches!(
        s.cart_add("alice", "zzz"),
        Err(StoreError::UnknownItem(_))
    ));
    assert!(s.cart_contains("alice", "a").unwrap());
    assert!(!s.cart_contains("bob", "a").unwrap(), "carts are per user");
    assert_eq!(s.cart_added_at("bob", "a").unwrap(), None);
    let mut items: Vec<_> = s
        .cart_list("alice")
        .unwrap()
        .into_iter()
        .map(|e| e.item)
        .collect();
    items.sort();
    assert_eq!(items, ["a", "b"]);
    assert!(s.cart_list("bob").unwrap().is_empty());
    assert!(matches!(
        s.cart_list("carol"),
        Err(StoreError::UnknownUser(_))
    ));

    assert!(s.cart_remove("alice", "a").unwrap());
    assert!(!s.cart_remove("alice", "a").unwrap());
    assert!(!s.cart_contains("alice", "a").unwrap());
}

pub(crate) fn history_and_grace(s: &dyn Storage) {
    shop(s);
    assert!(s.history_list("alice").unwrap().is_empty());
    assert!(matches!(
        s.history_list("carol"),
        Err(StoreError::UnknownUser(_))
    ));
    let since = now_ms();
    let added_at = s.cart_added_at("alice", "a").unwrap().unwrap();
    let done = s
        .commit_completion(&completion("alice", "a", added_at))
        .unwrap()
        .unwrap();
    assert!(done.completed_at_ms >= since);
    let history = s.history_list("alice").unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].item, "a");
    assert_eq!(history[0].completed_at_ms, done.completed_at_ms);
    assert!(s.history_list("bob").unwrap().is_empty());

    // The grace period: completed at or after `since` counts, not before, not another user's.
    assert!(s.recently_completed("alice", "a", since).unwrap());
    assert!(s
        .recently_completed("alice", "a", done.completed_at_ms)
        .unwrap());
    assert!(!s
        .recently_completed("alice", "a", done.completed_at_ms + 1)
        .unwrap());
    assert!(!s.recently_completed("bob", "a", 0).unwrap());
    assert!(!s.recently_completed("alice", "b", 0).unwrap());
}

pub(crate) fn progress_journal(s: &dyn Storage) {
    shop(s);
    let a_at = s.cart_added_at("alice", "a").unwrap().unwrap();
    let b_at = s.cart_added_at("alice", "b").unwrap().unwrap();
    assert!(s.progress("alice", "a").unwrap().is_empty());
    assert_eq!(s.delivered_bytes("alice", "a").unwrap(), 0);

    let first = set(&[(0, 4)]);
    let b = set(&[(0, 5), (10, 12)]);
    let rows = [
        ProgressWrite {
            user: "alice",
            item: "a",
            cart_added_at: a_at,
            part: 0,
            intervals: &first,
        },
        ProgressWrite {
            user: "alice",
            item: "b",
            cart_added_at: b_at,
            part: 0,
            intervals: &b,
        },
    ];
    assert_eq!(s.save_progress(&rows).unwrap(), 2);
    // A part's row is replaced, not added to.
    let more = set(&[(0, 6)]);
    journal(s, "a", a_at, &more);
    assert_eq!(
        s.progress("alice", "a").unwrap(),
        vec![ProgressRow {
            cart_added_at: a_at,
            part: 0,
            intervals: Some(more.clone()),
        }]
    );
    assert_eq!(s.delivered_bytes("alice", "a").unwrap(), 6);
    assert_eq!(s.delivered_bytes("alice", "b").unwrap(), 7);
    assert_eq!(s.delivered_bytes("bob", "a").unwrap(), 0, "per user");
    let mut purchases = s.journaled_purchases().unwrap();
    purchases.sort();
    assert_eq!(
        purchases,
        vec![
            ("alice".into(), "a".into(), a_at),
            ("alice".into(), "b".into(), b_at)
        ]
    );

    // Progress of a purchase that left the cart is not delivered, and is dropped on request.
    assert!(s.cart_remove("alice", "b").unwrap());
    assert_eq!(s.delivered_bytes("alice", "b").unwrap(), 0);
    assert_eq!(s.delivered_bytes("alice", "a").unwrap(), 6);
    assert_eq!(s.delete_ended_progress().unwrap(), 1);
    assert!(s.progress("alice", "b").unwrap().is_empty());
    assert_eq!(s.progress("alice", "a").unwrap().len(), 1);

    s.delete_progress("alice", "a").unwrap();
    assert!(s.progress("alice", "a").unwrap().is_empty());
    assert!(s.journaled_purchases().unwrap().is_empty());
}

pub(crate) fn completion_exactly_once(s: &dyn Storage) {
    shop(s);
    let added_at = s.cart_added_at("alice", "a").unwrap().unwrap();
    journal(s, "a", added_at, &set(&[(0, 10)]));

    let c = completion("alice", "a", added_at);
    let first = s.commit_completion(&c).unwrap().expect("recorded");
    // Everything of the completion happened together.
    assert!(!s.cart_contains("alice", "a").unwrap());
    assert!(s.cart_contains("alice", "b").unwrap());
    assert_eq!(s.history_list("alice").unwrap().len(), 1);
    assert!(s.progress("alice", "a").unwrap().is_empty());
    let queued = s.outbox_due(now_ms(), 10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].key, idempotency_key(first.history_id));
    assert_eq!(
        queued[0].payload,
        webhook_payload("alice", "a", first.completed_at_ms, first.history_id)
    );
    assert_eq!(queued[0].attempts, 0);

    // The same purchase never completes twice.
    assert_eq!(s.commit_completion(&c).unwrap(), None);
    assert_eq!(s.history_list("alice").unwrap().len(), 1);
    assert_eq!(s.outbox_len().unwrap(), 1);

    // A new purchase of the same item completes again, with its own history row and event;
    // without `notify` no event is queued.
    s.cart_add("alice", "a").unwrap();
    let again = s.cart_added_at("alice", "a").unwrap().unwrap();
    let quiet = Completion {
        notify: false,
        ..completion("alice", "a", again)
    };
    let second = s.commit_completion(&quiet).unwrap().expect("recorded");
    assert_ne!(second.history_id, first.history_id);
    assert_eq!(s.history_list("alice").unwrap().len(), 2);
    assert_eq!(s.outbox_len().unwrap(), 1);
}

pub(crate) fn completion_of_an_ended_purchase(s: &dyn Storage) {
    shop(s);
    let added_at = s.cart_added_at("alice", "a").unwrap().unwrap();
    journal(s, "a", added_at, &set(&[(0, 3)]));
    // A purchase other than the one in the cart (bought again since) records nothing, and its
    // progress goes.
    let stale = completion("alice", "a", added_at - 1);
    assert_eq!(s.commit_completion(&stale).unwrap(), None);
    assert!(s.cart_contains("alice", "a").unwrap());
    assert!(s.history_list("alice").unwrap().is_empty());
    assert_eq!(s.outbox_len().unwrap(), 0);
    assert!(s.progress("alice", "a").unwrap().is_empty());
    // An item that left the cart: the same.
    assert!(s.cart_remove("alice", "b").unwrap());
    assert_eq!(
        s.commit_completion(&completion("alice", "b", 0)).unwrap(),
        None
    );
    assert!(s.history_list("alice").unwrap().is_empty());
}

pub(crate) fn outbox_claim_ack_retry(s: &dyn Storage) {
    shop(s);
    assert_eq!(s.outbox_len().unwrap(), 0);
    assert_eq!(s.outbox_next_due().unwrap(), None);
    assert!(s.outbox_due(now_ms(), 10).unwrap().is_empty());
    for item in ["a", "b"] {
        let at = s.cart_added_at("alice", item).unwrap().unwrap();
        s.commit_completion(&completion("alice", item, at))
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.outbox_len().unwrap(), 2);
    let now = now_ms();
    let due = s.outbox_due(now, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due[0].id != due[1].id);
    assert!(s.outbox_next_due().unwrap().unwrap() <= now);
    assert_eq!(
        s.outbox_due(now, 1).unwrap(),
        due[..1],
        "limit, oldest first"
    );

    // A failure pushes the event back; the others stay due.
    s.outbox_retry(due[0].id, 1, now + 60_000).unwrap();
    let still = s.outbox_due(now, 10).unwrap();
    assert_eq!(still, due[1..]);
    assert!(s.outbox_next_due().unwrap().unwrap() <= now);
    let later = s.outbox_due(now + 60_000, 10).unwrap();
    assert_eq!(later.len(), 2);
    let retried = later.iter().find(|e| e.id == due[0].id).unwrap();
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.key, due[0].key, "the key is stable across retries");
    assert_eq!(retried.payload, due[0].payload);

    // An ack removes exactly that event.
    s.outbox_ack(due[1].id).unwrap();
    assert_eq!(s.outbox_len().unwrap(), 1);
    assert!(s.outbox_due(now, 10).unwrap().is_empty());
    assert_eq!(s.outbox_next_due().unwrap(), Some(now + 60_000));
    s.outbox_ack(due[0].id).unwrap();
    assert_eq!(s.outbox_len().unwrap(), 0);
    assert_eq!(s.outbox_next_due().unwrap(), None);
}
