//! Signed links: the shop's web app grants a download without weir touching its database.
//!
//! The web app and weir share a secret (`<data>/secret`, see [`crate::storage::SqliteStore::secret`]). A
//! link grants one `user` one `item` until `expires` (unix seconds), optionally in a named rate
//! class. The signature is HMAC-SHA256 over exactly this message (`\n` is a line feed; an absent
//! rate class is the empty string):
//!
//! ```text
//! weir-link-v1\n{user}\n{item}\n{expires}\n{rate_class}
//! ```
//!
//! encoded as base64url without padding (43 characters). The link's query string carries
//! `u={user}&e={expires}&s={sig}` and `&r={rate_class}` when there is one; the parameters may come
//! in any order and unknown ones are ignored. The item is not in the query: it is the item named by
//! the URL path, so a link for one item cannot be replayed against another.
//!
//! User, item and rate class are restricted to `[A-Za-z0-9._@-]` (1 to 128 bytes) and the expiry
//! to canonical decimal digits, so nothing needs percent-encoding and the message is unambiguous.
//!
//! Minting from Python, for the shop's side:
//!
//! ```python
//! import base64, hashlib, hmac, time
//! secret = bytes.fromhex(open("weir-data/secret").read().strip())
//! user, item, exp = "alice", "album-42", int(time.time()) + 3600
//! msg = f"weir-link-v1\n{user}\n{item}\n{exp}\n".encode()
//! sig = base64.urlsafe_b64encode(hmac.new(secret, msg, hashlib.sha256).digest()).rstrip(b"=").decode()
//! url = f"/d/{item}?u={user}&e={exp}&s={sig}"
//! ```
//!
//! and in Rust:
//!
//! ```
//! use weir::token::{mint, verify, LinkClaims};
//! let claims = LinkClaims { user: "alice".into(), item: "album-42".into(), expires: 2_000, rate_class: None };
//! let query = mint(b"shared secret", &claims);
//! assert_eq!(verify(b"shared secret", "album-42", &query, 1_000), Ok(claims));
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separator and version of the signed message.
const PREFIX: &[u8] = b"weir-link-v1\n";
/// Length of an HMAC-SHA256 tag in base64url without padding.
const SIG_LEN: usize = 43;
/// Longest user, item or rate class a link may name.
const MAX_FIELD: usize = 128;

/// What a signed link grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkClaims {
    pub user: String,
    pub item: String,
    /// Unix seconds; the link is valid while `now < expires`.
    pub expires: u64,
    pub rate_class: Option<String>,
}

/// Why a signed link was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Missing, duplicated or badly formed parameters (including no `s=` at all).
    #[error("malformed signed link")]
    Malformed,
    /// Well formed, but not signed with this server's secret for this item.
    #[error("bad signature")]
    BadSignature,
    /// Correctly signed, but past its expiry.
    #[error("signed link expired")]
    Expired,
}

/// Whether `s` may appear as a user, item or rate class in a link: 1 to 128 bytes of
/// `[A-Za-z0-9._@-]`.
pub fn valid_field(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FIELD
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Whether the expiry is in canonical decimal form (digits only, no leading zero, fits a u64).
fn parse_expires(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

fn mac(secret: &[u8], user: &str, item: &str, expires: &str, rate_class: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for (i, part) in [user, item, expires, rate_class].into_iter().enumerate() {
        if i == 0 {
            mac.update(PREFIX);
        } else {
            mac.update(b"\n");
        }
        mac.update(part.as_bytes());
    }
    mac
}

/// Signs `claims` and returns the link's query string (no leading `?`):
/// `u=USER&e=EXPIRES&s=SIG[&r=RATE_CLASS]`.
///
/// The fields must satisfy [`valid_field`]; a link minted from anything else will not verify.
pub fn mint(secret: &[u8], claims: &LinkClaims) -> String {
    let expires = claims.expires.to_string();
    let rate_class = claims.rate_class.as_deref().unwrap_or("");
    let tag = mac(secret, &claims.user, &claims.item, &expires, rate_class)
        .finalize()
        .into_bytes();
    let sig = URL_SAFE_NO_PAD.encode(tag);
    let mut query = format!("u={}&e={}&s={}", claims.user, expires, sig);
    if let Some(r) = &claims.rate_class {
        query.push_str("&r=");
        query.push_str(r);
    }
    query
}

/// Whether the query string carries a signature parameter at all. Without one the request is not
/// a signed link and the server falls back to Basic auth; with one, [`verify`] decides.
pub fn has_signature(query: &str) -> bool {
    query.split('&').any(|p| p == "s" || p.starts_with("s="))
}

/// Checks a signed link for `item` (from the URL path) against `secret` at time `now_unix`.
///
/// Refusals come in this order: [`TokenError::Malformed`], then [`TokenError::BadSignature`]
/// (compared in constant time), then [`TokenError::Expired`].
pub fn verify(
    secret: &[u8],
    item: &str,
    query: &str,
    now_unix: u64,
) -> Result<LinkClaims, TokenError> {
    let (mut user, mut expires, mut sig, mut rate_class) = (None, None, None, None);
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let slot = match key {
            "u" => &mut user,
            "e" => &mut expires,
            "s" => &mut sig,
            "r" => &mut rate_class,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            // A repeated parameter is ambiguous: refuse rather than guess which one counts.
            return Err(TokenError::Malformed);
        }
    }
    let (Some(user), Some(expires_str), Some(sig)) = (user, expires, sig) else {
        return Err(TokenError::Malformed);
    };
    let expires = parse_expires(expires_str).ok_or(TokenError::Malformed)?;
    if !valid_field(user) || !valid_field(item) || rate_class.is_some_and(|r| !valid_field(r)) {
        return Err(TokenError::Malformed);
    }
    if sig.len() != SIG_LEN {
        return Err(TokenError::Malformed);
    }
    let mut tag = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) {
        Ok(32) => {}
        _ => return Err(TokenError::Malformed),
    }
    mac(secret, user, item, expires_str, rate_class.unwrap_or(""))
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    if now_unix >= expires {
        return Err(TokenError::Expired);
    }
    Ok(LinkClaims {
        user: user.to_owned(),
        item: item.to_owned(),
        expires,
        rate_class: rate_class.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(rate_class: Option<&str>) -> LinkClaims {
        LinkClaims {
            user: "alice@example.com".into(),
            item: "album-42".into(),
            expires: 1_700_000_000,
            rate_class: rate_class.map(Into::into),
        }
    }

    #[test]
    fn known_vector() {
        // Computed independently with Python and with: printf 'weir-link-v1\nalice\nitem\n100\n' |
        //   openssl dgst -sha256 -hmac key -binary | basenc --base64url | tr -d =
        let q = mint(
            b"key",
            &LinkClaims {
                user: "alice".into(),
                item: "item".into(),
                expires: 100,
                rate_class: None,
            },
        );
        assert_eq!(q, format!("u=alice&e=100&s={}", KNOWN_SIG));
    }
    const KNOWN_SIG: &str = "aDOotNd3VjINYwDoT6K_YvsnfV_-BnhmedLuft2FaKc";

    #[test]
    fn round_trip_with_and_without_rate_class() {
        for rc in [None, Some("gold")] {
            let c = claims(rc);
            let q = mint(SECRET, &c);
            assert_eq!(verify(SECRET, &c.item, &q, c.expires - 1), Ok(c));
        }
    }

    #[test]
    fn parameter_order_does_not_matter_and_unknown_params_are_ignored() {
        let c = claims(Some("gold"));
        let q = mint(SECRET, &c);
        let mut parts: Vec<&str> = q.split('&').collect();
        parts.reverse();
        let shuffled = format!("utm_source=mail&{}&x", parts.join("&"));
        assert_eq!(verify(SECRET, &c.item, &shuffled, 0), Ok(c));
    }

    #[test]
    fn refusals() {
        let c = claims(None);
        let q = mint(SECRET, &c);
        assert_eq!(
            verify(SECRET, "other-item", &q, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"other", &c.item, &q, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, &c.item, &q, c.expires),
            Err(TokenError::Expired)
        );
        // Dropping the rate class, or adding one, changes the message.
        let with_rc = mint(SECRET, &claims(Some("gold")));
        let stripped = with_rc.replace("&r=gold", "");
        assert_eq!(
            verify(SECRET, &c.item, &stripped, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, &c.item, &format!("{q}&r=gold"), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed() {
        let c = claims(None);
        let q = mint(SECRET, &c);
        let sig = q.split("&s=").nth(1).unwrap();
        for bad in [
            String::new(),
            "u=alice&e=1".to_string(),
            format!("e=1&s={sig}"),
            format!("u=alice&s={sig}"),
            format!("{q}&u=bob"),
            format!("{q}&s={sig}"),
            format!("u=al%20ice&e=1&s={sig}"),
            format!("u=alice&e=+1&s={sig}"),
            format!("u=alice&e=01&s={sig}"),
            format!("u=alice&e=99999999999999999999999&s={sig}"),
            format!("u=alice&e=1&s={sig}="),
            format!("u=alice&e=1&s={}", &sig[1..]),
            format!("u=alice&e=1&s={sig}&r="),
            format!("u=&e=1&s={sig}"),
        ] {
            assert_eq!(
                verify(SECRET, &c.item, &bad, 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(verify(SECRET, "a/b", &q, 0), Err(TokenError::Malformed));
        assert_eq!(verify(SECRET, "", &q, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn has_signature_looks_for_the_s_param_only() {
        assert!(has_signature("u=a&e=1&s=xyz"));
        assert!(has_signature("s="));
        assert!(has_signature("s"));
        assert!(!has_signature(""));
        assert!(!has_signature("u=a&e=1"));
        assert!(!has_signature("sig=1&ss=2&x=s"));
    }

    fn field() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._@-]{1,40}"
    }

    fn arb_claims() -> impl Strategy<Value = LinkClaims> {
        (field(), field(), 1..u64::MAX, proptest::option::of(field())).prop_map(
            |(user, item, expires, rate_class)| LinkClaims {
                user,
                item,
                expires,
                rate_class,
            },
        )
    }

    /// Replaces the byte at `i` of `s` with a different character of the same class, so the
    /// result is still well formed where possible and only the signature can catch it.
    fn mutate(s: &str, i: usize, pick: u8) -> String {
        let alphabet: &[u8] = if s.as_bytes()[i].is_ascii_digit() {
            b"0123456789"
        } else {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        };
        let mut bytes = s.as_bytes().to_vec();
        let mut c = alphabet[pick as usize % alphabet.len()];
        if c == bytes[i] {
            c = alphabet[(pick as usize + 1) % alphabet.len()];
        }
        bytes[i] = c;
        String::from_utf8(bytes).unwrap()
    }

    proptest! {
        #[test]
        fn mint_then_verify_round_trips(c in arb_claims()) {
            let q = mint(SECRET, &c);
            prop_assert!(has_signature(&q));
            prop_assert_eq!(verify(SECRET, &c.item, &q, c.expires - 1), Ok(c.clone()));
            prop_assert_eq!(verify(SECRET, &c.item, &q, c.expires), Err(TokenError::Expired));
            prop_assert_eq!(verify(SECRET, &c.item, &q, u64::MAX), Err(TokenError::Expired));
        }

        #[test]
        fn any_single_byte_change_fails(c in arb_claims(), which in 0..4usize, at in any::<prop::sample::Index>(), pick in any::<u8>()) {
            let now = c.expires - 1;
            let (item, query) = match which {
                // The item comes from the path.
                0 => (mutate(&c.item, at.index(c.item.len()), pick), mint(SECRET, &c)),
                1 => {
                    let user = mutate(&c.user, at.index(c.user.len()), pick);
                    (c.item.clone(), mint(SECRET, &c).replacen(&format!("u={}&", c.user), &format!("u={user}&"), 1))
                }
                2 => {
                    let e = c.expires.to_string();
                    let changed = mutate(&e, at.index(e.len()), pick);
                    (c.item.clone(), mint(SECRET, &c).replacen(&format!("e={e}&"), &format!("e={changed}&"), 1))
                }
                _ => {
                    let q = mint(SECRET, &c);
                    let start = q.find("&s=").unwrap() + 3;
                    let sig = &q[start..start + SIG_LEN];
                    let changed = mutate(sig, at.index(SIG_LEN), pick);
                    (c.item.clone(), q.replacen(sig, &changed, 1))
                }
            };
            prop_assert!(verify(SECRET, &item, &query, now).is_err(), "{} {}", item, query);
        }
    }
}
