//! Routing: which catalog object a request path names.
//!
//! The URL space is tiny and fixed:
//!
//! | path                 | route                                   |
//! |----------------------|-----------------------------------------|
//! | `/d/{id}`            | [`Route::Item`]                         |
//! | `/d/{album}/{n}`     | [`Route::Track`] (`n` is 1-based)       |
//! | `/d/{album}.zip`     | [`Route::Item`]`("{album}.zip")`, see below |
//!
//! Ids (items and albums alike) match `[A-Za-z0-9][A-Za-z0-9._@-]{0,127}` and never contain
//! `..`. **Ids are database keys, never file paths**: the catalog looks them up in the store,
//! which maps them to content-addressed files it imported, so no request path can name a file
//! outside the catalog whatever it contains. The charset check is defence in depth and keeps
//! logs and metrics labels clean. Nothing is percent-decoded: no id needs it, so any `%` is a
//! miss, as are `//`, `\`, NUL and a track number that is 0, not plain decimal, has a leading
//! zero, or overflows a `u32`. A miss is [`Route::NotFound`] (404), never an error that
//! reveals more.
//!
//! `/d/x.zip` is ambiguous: an item whose id is `x.zip`, or the zip of album `x`. [`route`]
//! answers `Item("x.zip")`; when the store has no such item the server tries
//! [`zip_album`]`("x.zip")` = `Some("x")`. Only when `{album}.zip` is too long to be an item id
//! (album ids of 125 to 128 bytes) is the answer [`Route::Zip`] directly.

/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Where a request goes. Item ids and album ids use the charset
/// `[A-Za-z0-9][A-Za-z0-9._@-]{0,127}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/d/{id}`: a file item (or, if no such item exists, maybe an album zip: [`zip_album`]).
    Item(&'a str),
    /// `/d/{album}/{n}`: track `n` (1-based) of an album.
    Track {
        /// The album id.
        album: &'a str,
        /// 1-based track number.
        n: u32,
    },
    /// `/d/{album}.zip` where `{album}.zip` cannot be an item id.
    Zip(&'a str),
    /// Anything else: 404.
    NotFound,
}

/// Routes a request path (without query; see [`crate::http::RequestHead::target`]).
pub fn route(target: &str) -> Route<'_> {
    let Some(rest) = target.strip_prefix("/d/") else {
        return Route::NotFound;
    };
    match rest.split_once('/') {
        None if is_id(rest) => Route::Item(rest),
        None => match zip_album(rest) {
            Some(album) => Route::Zip(album),
            None => Route::NotFound,
        },
        Some((album, n)) => match (is_id(album), track_number(n)) {
            (true, Some(n)) => Route::Track { album, n },
            _ => Route::NotFound,
        },
    }
}

/// If `id` has the form `{album}.zip` with a valid album id, that album id.
pub fn zip_album(id: &str) -> Option<&str> {
    // An album ending in `.` would make `{album}.zip` contain `..`.
    id.strip_suffix(".zip")
        .filter(|album| is_id(album) && !album.ends_with('.'))
}

/// Whether `s` is a valid item or album id.
pub fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    match b {
        [first, rest @ ..] if b.len() <= MAX_ID_LEN && first.is_ascii_alphanumeric() => {
            let mut prev_dot = false;
            rest.iter().all(|&c| {
                let dot = c == b'.';
                let ok = (c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
                    && !(dot && prev_dot);
                prev_dot = dot;
                ok
            })
        }
        _ => false,
    }
}

/// A track number: plain decimal, no leading zero, 1..=u32::MAX.
fn track_number(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 10 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn items_tracks_zips() {
        assert_eq!(route("/d/abc"), Route::Item("abc"));
        assert_eq!(route("/d/A-b_c.d@e"), Route::Item("A-b_c.d@e"));
        assert_eq!(
            route("/d/album1/3"),
            Route::Track {
                album: "album1",
                n: 3
            }
        );
        assert_eq!(
            route("/d/a/4294967295"),
            Route::Track {
                album: "a",
                n: u32::MAX
            }
        );
        assert_eq!(route("/d/x.zip"), Route::Item("x.zip"));
        assert_eq!(zip_album("x.zip"), Some("x"));
        assert_eq!(zip_album("x"), None);
        assert_eq!(zip_album(".zip"), None);
        assert_eq!(zip_album("a..zip"), None);
        let long = "a".repeat(MAX_ID_LEN);
        assert_eq!(route(&format!("/d/{long}")), Route::Item(&long));
        assert_eq!(route(&format!("/d/{long}.zip")), Route::Zip(&long));
        let short = &long[..MAX_ID_LEN - 4];
        assert_eq!(
            route(&format!("/d/{short}.zip")),
            Route::Item(&format!("{short}.zip"))
        );
    }

    #[test]
    fn misses() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        for p in [
            "",
            "/",
            "/d",
            "/d/",
            "/d//x",
            "/x/abc",
            "/D/abc",
            "/d/abc/",
            "/d/.hidden",
            "/d/-x",
            "/d/a..b",
            "/d/..",
            "/d/../etc/passwd",
            "/d/a/../b",
            "/d/a%2Fb",
            "/d/a\\b",
            "/d/a\0b",
            "/d/a b",
            "/d/a?x",
            "/d/é",
            "/d/a/0",
            "/d/a/01",
            "/d/a/+1",
            "/d/a/-1",
            "/d/a/1x",
            "/d/a/4294967296",
            "/d/a/99999999999999999999",
            "/d/a/1/2",
            "/d/a//1",
            "/d/..zip",
            "/d/a..zip",
            "/d/.zip",
            &format!("/d/{long}"),
            &format!("/d/{long}/1"),
            &format!("/d/{long}.zip"),
        ] {
            assert_eq!(route(p), Route::NotFound, "{p:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_never_escapes(s in ".{0,300}") {
            check(&route(&s));
            check(&route(&format!("/d/{s}")));
        }

        #[test]
        fn near_misses(s in "/d/[A-Za-z0-9./@_%\\\\-]{0,40}") {
            check(&route(&s));
        }
    }

    fn check(r: &Route<'_>) {
        let id = match *r {
            Route::Item(id) | Route::Zip(id) => id,
            Route::Track { album, n } => {
                assert!(n > 0);
                album
            }
            Route::NotFound => return,
        };
        assert!(is_id(id), "{id:?}");
        assert!(!id.contains('/') && !id.contains("..") && !id.contains('%'));
        assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
    }
}
