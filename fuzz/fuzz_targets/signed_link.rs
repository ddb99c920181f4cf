//! Signed-link verification (`weir::token::verify`): arbitrary query strings against a fixed
//! secret, and the mint/verify round trip for arbitrary claims.
//!
//! Input (text, so seeds are readable): lines `query`, `item`, `now`, `user`, `expires` and an
//! optional `rate_class`; the query is verified as is, and the other lines are minted.
//!
//! Properties checked beyond "no panic":
//! - an accepted link grants the item of the path, has not expired, names a valid user, and its
//!   canonical re-minting verifies to the same claims; another secret refuses it
//!   (`BadSignature`), a later clock refuses it (`Expired`), another item refuses it;
//! - `verify` only accepts a query that `has_signature`;
//! - minted links with valid fields verify to exactly their claims, and are refused with
//!   `Expired` at or after their expiry and `BadSignature` for another item or secret;
//!   minted links with any invalid field never verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::token::{has_signature, mint, valid_field, verify, LinkClaims, TokenError};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER_SECRET: &[u8] = b"0123456789abcdef0123456789abcdeF";

/// One input, from text lines: query, item, now, user, expires, and the rate class if there is
/// a sixth line.
struct Input<'a> {
    query: &'a str,
    item: &'a str,
    now: u64,
    user: &'a str,
    expires: u64,
    rate_class: Option<&'a str>,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (query, item, now, user, expires) =
        (next(), next(), number(next()), next(), number(next()));
    let rate_class = lines.next();
    check(Input {
        query,
        item,
        now,
        user,
        expires,
        rate_class,
    });
});

/// A decimal line (saturating), 0 when absent or not a number.
fn number(line: &str) -> u64 {
    line.trim()
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

fn check(input: Input) {
    // 1. Arbitrary query strings.
    let item = if valid_field(input.item) {
        input.item
    } else {
        "album-42"
    };
    let result = verify(SECRET, item, input.query, input.now);
    if let Ok(c) = &result {
        assert!(has_signature(input.query));
        assert_eq!(c.item, item);
        assert!(input.now < c.expires);
        assert!(valid_field(&c.user));
        assert!(c.rate_class.as_deref().is_none_or(valid_field));
        assert_eq!(
            verify(SECRET, item, &mint(SECRET, c), input.now).as_ref(),
            Ok(c)
        );
        assert_eq!(
            verify(OTHER_SECRET, item, input.query, input.now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, item, input.query, c.expires),
            Err(TokenError::Expired)
        );
        let other = if item == "album-43" {
            "album-44"
        } else {
            "album-43"
        };
        assert_eq!(
            verify(SECRET, other, input.query, input.now),
            Err(TokenError::BadSignature)
        );
    }
    if !has_signature(input.query) {
        assert_eq!(result, Err(TokenError::Malformed));
    }

    // 2. Round trip of arbitrary claims.
    let claims = LinkClaims {
        user: input.user.to_owned(),
        item: input.item.to_owned(),
        expires: input.expires,
        rate_class: input.rate_class.map(str::to_owned),
    };
    let query = mint(SECRET, &claims);
    assert!(has_signature(&query));
    let valid = valid_field(&claims.user)
        && valid_field(&claims.item)
        && claims.rate_class.as_deref().is_none_or(valid_field);
    if !valid {
        let got = verify(SECRET, &claims.item, &query, 0);
        assert!(
            got.is_err(),
            "a link with an invalid field verified: {got:?}"
        );
        return;
    }
    let now = input.now % claims.expires.max(1);
    if now < claims.expires {
        assert_eq!(
            verify(SECRET, &claims.item, &query, now),
            Ok(claims.clone())
        );
    }
    assert_eq!(
        verify(SECRET, &claims.item, &query, claims.expires.max(input.now)),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify(OTHER_SECRET, &claims.item, &query, now),
        Err(TokenError::BadSignature)
    );
    let other = format!("{}x", &claims.item[..claims.item.len().min(127)]);
    if other != claims.item {
        assert_eq!(
            verify(SECRET, &other, &query, now),
            Err(TokenError::BadSignature)
        );
    }
}
