//! Conditional requests (RFC 9110 §13) for GET and HEAD: 412 Precondition Failed, 304 Not
//! Modified, and whether a Range survives its `If-Range`.
//!
//! Evaluation order (§13.2.2, for GET and HEAD):
//! 1. `If-Match` present: strong comparison against the ETag (`*` matches: the representation
//!    exists; lists allowed; a weak tag never matches); no match is 412. A malformed list
//!    matches nothing.
//! 2. Otherwise `If-Unmodified-Since`: if it is a valid HTTP-date and the representation was
//!    modified after it (second precision) → 412. An invalid date is ignored.
//! 3. `If-None-Match` present: weak comparison against the ETag (`*` matches, lists allowed);
//!    a match is 304. A malformed list matches nothing.
//! 4. Otherwise `If-Modified-Since`: if it is a valid HTTP-date and the representation was not
//!    modified after it (second precision) → 304. An invalid date is ignored.
//! 5. `If-Range` decides whether a Range is honoured: only a strong ETag equal to ours (strong
//!    comparison), or an HTTP-date exactly equal to our Last-Modified (weir's files are immutable
//!    once imported, so its Last-Modified is a strong validator). A weak ETag, another value or
//!    garbage → serve the whole representation (200).

use std::time::{SystemTime, UNIX_EPOCH};

use super::request::RequestHead;

/// Validators of a representation: strong ETag and Last-Modified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validators<'a> {
    /// The ETag with its quotes, e.g. `"\"abc123\""`.
    pub etag: &'a str,
    /// Last modification time; compared at second precision.
    pub last_modified: SystemTime,
}

/// What the conditional header fields decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// 412 Precondition Failed: `If-Match` or `If-Unmodified-Since` failed; no body.
    Failed,
    /// 304 Not Modified: send the head (with ETag and Last-Modified) and no body.
    NotModified,
    /// Serve normally; `honor_range` is false when `If-Range` did not match (then ignore the
    /// Range and send 200 with the whole representation).
    Proceed {
        /// Whether a Range header, if any, applies.
        honor_range: bool,
    },
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since` and
/// `If-Range` for a GET or HEAD, in the order of RFC 9110 §13.2.2.
pub fn evaluate_preconditions(head: &RequestHead, v: &Validators) -> Precondition {
    let failed = match (&head.if_match, &head.if_unmodified_since) {
        (Some(im), _) => !list_matches(im, v.etag, true),
        (None, Some(ius)) => match httpdate::parse_http_date(ius) {
            Ok(since) => unix_secs(v.last_modified) > unix_secs(since),
            Err(_) => false,
        },
        (None, None) => false,
    };
    if failed {
        return Precondition::Failed;
    }
    let not_modified = match (&head.if_none_match, &head.if_modified_since) {
        (Some(inm), _) => list_matches(inm, v.etag, false),
        (None, Some(ims)) => match httpdate::parse_http_date(ims) {
            Ok(since) => unix_secs(v.last_modified) <= unix_secs(since),
            Err(_) => false,
        },
        (None, None) => false,
    };
    if not_modified {
        return Precondition::NotModified;
    }
    let honor_range = match &head.if_range {
        None => true,
        Some(ir) => if_range_matches(ir, v),
    };
    Precondition::Proceed { honor_range }
}

/// Whole seconds since the epoch (times before it count as 0).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An `If-Match` (`strong`) or `If-None-Match` (weak comparison) list against our ETag.
fn list_matches(field: &str, etag: &str, strong: bool) -> bool {
    let field = field.trim_matches([' ', '\t']);
    if field == "*" {
        return true;
    }
    let ours = opaque(etag);
    let mut rest = field;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let Some((tag, after)) = next_etag(rest) else {
            return false; // malformed: matches nothing
        };
        let equal = if strong {
            tag == etag && !tag.starts_with("W/")
        } else {
            opaque(tag) == ours
        };
        if equal {
            return true;
        }
        rest = after;
        // Elements are separated by a comma (with optional whitespace).
        let sep = rest.trim_start_matches([' ', '\t']);
        if !sep.is_empty() && !sep.starts_with(',') {
            return false;
        }
    }
}

/// `If-Range` against our validators.
fn if_range_matches(field: &str, v: &Validators) -> bool {
    let field = field.trim_matches([' ', '\t']);
    if field.starts_with('"') {
        // Strong comparison: both strong and the same bytes.
        return matches!(next_etag(field), Some((tag, "")) if tag == v.etag);
    }
    if field.starts_with("W/") {
        return false;
    }
    match httpdate::parse_http_date(field) {
        Ok(date) => unix_secs(date) == unix_secs(v.last_modified),
        Err(_) => false,
    }
}

/// Splits the entity-tag at the start of `s` (`W/"..."` or `"..."`) from what follows.
fn next_etag(s: &str) -> Option<(&str, &str)> {
    let body = s.strip_prefix("W/").unwrap_or(s);
    let inner = body.strip_prefix('"')?;
    let close = inner.find('"')?;
    let tag_len = (s.len() - body.len()) + 1 + close + 1;
    let tag = &s[..tag_len];
    // etagc = %x21 / %x23-7E / obs-text
    let etagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80;
    if !inner[..close].bytes().all(etagc) {
        return None;
    }
    Some((tag, &s[tag_len..]))
}

/// The opaque tag, quotes included, of an entity-tag (weak comparison ignores `W/`).
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::Method;
    use std::time::Duration;

    const LM: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const LM_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn v() -> Validators<'static> {
        Validators {
            etag: "\"abc123\"",
            last_modified: UNIX_EPOCH + Duration::from_millis(LM * 1000 + 750),
        }
    }

    fn req(inm: Option<&str>, ims: Option<&str>, ir: Option<&str>) -> RequestHead {
        req_all(None, None, inm, ims, ir)
    }

    fn req_all(
        im: Option<&str>,
        ius: Option<&str>,
        inm: Option<&str>,
        ims: Option<&str>,
        ir: Option<&str>,
    ) -> RequestHead {
        RequestHead {
            method: Method::Get,
            target: "/d/x".into(),
            query: None,
            http10: false,
            keep_alive: true,
            range: Some("bytes=0-1".into()),
            if_range: ir.map(Into::into),
            if_none_match: inm.map(Into::into),
            if_modified_since: ims.map(Into::into),
            if_match: im.map(Into::into),
            if_unmodified_since: ius.map(Into::into),
            authorization: None,
        }
    }

    fn eval(inm: Option<&str>, ims: Option<&str>, ir: Option<&str>) -> Precondition {
        evaluate_preconditions(&req(inm, ims, ir), &v())
    }

    const GO: Precondition = Precondition::Proceed { honor_range: true };
    const FULL: Precondition = Precondition::Proceed { honor_range: false };
    const NM: Precondition = Precondition::NotModified;
    const FAIL: Precondition = Precondition::Failed;

    fn eval_match(im: Option<&str>, ius: Option<&str>, inm: Option<&str>) -> Precondition {
        evaluate_preconditions(&req_all(im, ius, inm, None, None), &v())
    }

    #[test]
    fn if_match() {
        assert_eq!(eval_match(Some("\"abc123\""), None, None), GO);
        assert_eq!(eval_match(Some("*"), None, None), GO);
        assert_eq!(eval_match(Some("\"x\", \"abc123\""), None, None), GO);
        assert_eq!(eval_match(Some("\"x\""), None, None), FAIL);
        assert_eq!(
            eval_match(Some("W/\"abc123\""), None, None),
            FAIL,
            "strong comparison: a weak tag never matches"
        );
        assert_eq!(eval_match(Some("abc123"), None, None), FAIL, "malformed");
        assert_eq!(eval_match(Some(""), None, None), FAIL);
        // If-Match passes: If-Unmodified-Since is not evaluated.
        let early = "Sun, 06 Nov 1994 08:49:36 GMT";
        assert_eq!(eval_match(Some("*"), Some(early), None), GO);
        // 412 wins over 304.
        assert_eq!(eval_match(Some("\"x\""), None, Some("*")), FAIL);
        // Passing If-Match, then If-None-Match decides.
        assert_eq!(eval_match(Some("*"), None, Some("*")), NM);
    }

    #[test]
    fn if_unmodified_since() {
        assert_eq!(eval_match(None, Some(LM_TEXT), None), GO, "same second");
        let later = "Sun, 06 Nov 1994 08:49:38 GMT";
        assert_eq!(eval_match(None, Some(later), None), GO);
        let early = "Sun, 06 Nov 1994 08:49:36 GMT";
        assert_eq!(eval_match(None, Some(early), None), FAIL);
        assert_eq!(
            eval_match(None, Some("yesterday"), None),
            GO,
            "invalid is ignored"
        );
        assert_eq!(
            eval_match(None, Some(early), Some("*")),
            FAIL,
            "412 before 304"
        );
    }

    #[test]
    fn if_none_match() {
        assert_eq!(eval(None, None, None), GO);
        assert_eq!(eval(Some("\"abc123\""), None, None), NM);
        assert_eq!(
            eval(Some("W/\"abc123\""), None, None),
            NM,
            "weak comparison"
        );
        assert_eq!(eval(Some("*"), None, None), NM);
        assert_eq!(eval(Some(" \"x\", W/\"abc123\""), None, None), NM);
        assert_eq!(eval(Some("\"x\",\"y\""), None, None), GO);
        assert_eq!(
            eval(Some("\"a,b\", \"abc123\""), None, None),
            NM,
            "comma in tag"
        );
        assert_eq!(eval(Some("\"abc\""), None, None), GO);
        assert_eq!(
            eval(Some("abc123"), None, None),
            GO,
            "unquoted is malformed"
        );
        assert_eq!(
            eval(Some("\"x\" \"abc123\""), None, None),
            GO,
            "missing comma"
        );
        assert_eq!(
            eval(Some("w/\"abc123\""), None, None),
            GO,
            "W/ is case-sensitive"
        );
        assert_eq!(eval(Some(""), None, None), GO);
        // If-None-Match present: If-Modified-Since is not evaluated.
        assert_eq!(eval(Some("\"x\""), Some(LM_TEXT), None), GO);
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(eval(None, Some(LM_TEXT), None), NM, "same second");
        assert_eq!(eval(None, Some("Sun, 06 Nov 1994 08:49:38 GMT"), None), NM);
        assert_eq!(eval(None, Some("Sun, 06 Nov 1994 08:49:36 GMT"), None), GO);
        assert_eq!(eval(None, Some("Sunday, 06-Nov-94 08:49:37 GMT"), None), NM);
        assert_eq!(eval(None, Some("Sun Nov  6 08:49:37 1994"), None), NM);
        assert_eq!(
            eval(None, Some("yesterday"), None),
            GO,
            "invalid is ignored"
        );
        assert_eq!(eval(None, Some(""), None), GO);
    }

    #[test]
    fn if_range() {
        assert_eq!(eval(None, None, Some("\"abc123\"")), GO);
        assert_eq!(eval(None, None, Some(" \"abc123\" ")), GO);
        assert_eq!(
            eval(None, None, Some("W/\"abc123\"")),
            FULL,
            "weak never matches"
        );
        assert_eq!(eval(None, None, Some("\"abc12\"")), FULL);
        assert_eq!(
            eval(None, None, Some("\"abc123\", \"x\"")),
            FULL,
            "not a list"
        );
        assert_eq!(eval(None, None, Some(LM_TEXT)), GO);
        assert_eq!(
            eval(None, None, Some("Sun, 06 Nov 1994 08:49:38 GMT")),
            FULL,
            "dates must be equal"
        );
        assert_eq!(eval(None, None, Some("garbage")), FULL);
        assert_eq!(eval(None, None, Some("")), FULL);
        // 304 wins over If-Range.
        assert_eq!(eval(Some("*"), None, Some("W/\"x\"")), NM);
    }

    #[test]
    fn odd_times_do_not_panic() {
        let early = Validators {
            etag: "\"e\"",
            last_modified: UNIX_EPOCH - Duration::from_secs(10),
        };
        let h = req(None, Some("Thu, 01 Jan 1970 00:00:00 GMT"), Some(LM_TEXT));
        assert_eq!(evaluate_preconditions(&h, &early), NM);
        assert_eq!(next_etag("W/"), None);
        assert_eq!(next_etag("\""), None);
        assert_eq!(next_etag("\"\x01\""), None);
        assert_eq!(next_etag("\"é\"x"), Some(("\"é\"", "x")));
    }
}
