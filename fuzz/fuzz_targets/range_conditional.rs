//! `Range` resolution (`weir::http::resolve_ranges`) and the conditional fields
//! (`weir::http::evaluate_preconditions`) on heads produced by the real parser, plus the
//! multipart layout of what the ranges resolve to.
//!
//! Input (text, so seeds are readable): the first line is the representation length (at most
//! `i64::MAX`, as file sizes are), the second our Last-Modified (unix seconds), every further
//! line a header field line appended to `GET /d/item HTTP/1.1` + `Host`. Every line is also resolved as a raw `Range` value, CR,
//! control bytes and all, without going through the parser.
//!
//! Properties checked beyond "no panic":
//! - resolved ranges are non-empty, lie within the length, are ascending, disjoint and not
//!   adjacent; a multipart answer has 2 to `MAX_RANGES` parts; nothing is partial when the
//!   length is 0; only a `bytes=` header can give anything but a 200;
//! - against an independent model of the range-spec grammar: a single range is exactly the
//!   cover of every satisfiable spec, and a multipart answer is exactly their merged union;
//! - the multipart body's length is the sum of its pieces, its file pieces are the ranges;
//! - preconditions: `If-None-Match: *` or our own ETag gives 304, no conditional fields gives a
//!   plain 200/206, an `If-Range` equal to our strong ETag keeps the Range and a weak one drops it.
#![no_main]

use std::ops::Range;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use weir::http::range::MAX_RANGES;
use weir::http::{
    boundary_for, evaluate_preconditions, parse_request, resolve_ranges, Limits, Multipart, Parsed,
    Piece, Precondition, RangeOutcome, Ranges, Validators,
};

const ETAG: &str = "\"3f2a9c\"";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    // A file's length is an off_t: at most i64::MAX.
    let len = number(lines.next()).min(i64::MAX as u64);
    let last_modified = number(lines.next());
    let fields: Vec<&str> = lines.collect();
    for f in &fields {
        check_ranges(f, len);
        if let Some((_, value)) = f.split_once(':') {
            check_ranges(value, len);
        }
    }

    // The same fields as the parser hands them over.
    let mut req = String::from("GET /d/item HTTP/1.1\r\nHost: weir\r\n");
    for f in &fields {
        req.push_str(f.strip_suffix('\r').unwrap_or(f));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let Ok(Parsed::Complete { head, .. }) = parse_request(req.as_bytes(), &Limits::default())
    else {
        return;
    };
    let v = Validators {
        etag: ETAG,
        last_modified: UNIX_EPOCH + Duration::from_secs(last_modified % (1 << 40)),
    };
    let pre = evaluate_preconditions(&head, &v);
    assert_eq!(pre, evaluate_preconditions(&head, &v));
    // RFC 9110 §13.2.2: If-Match, then If-Unmodified-Since, decide first (412).
    // Only the clear cases are modelled: exactly `*` or the strong tag matches; a list that
    // holds neither `*` nor the tag's text cannot.
    let strong_match = match head.if_match.as_deref() {
        None => None,
        Some("*") | Some(ETAG) => Some(true),
        Some(m) if !m.contains('*') && !m.contains(ETAG.trim_matches('"')) => Some(false),
        Some(_) => None,
    };
    let unknown = head.if_match.is_some() && strong_match.is_none();
    if !unknown
        && (strong_match == Some(true)
            || (head.if_match.is_none() && head.if_unmodified_since.is_none()))
    {
        match head.if_none_match.as_deref() {
            Some("*") | Some(ETAG) | Some("W/\"3f2a9c\"") => {
                assert_eq!(pre, Precondition::NotModified)
            }
            _ => {}
        }
    }
    if strong_match == Some(false) {
        assert_eq!(pre, Precondition::Failed);
    }
    if head.if_match.is_none()
        && head.if_unmodified_since.is_none()
        && head.if_none_match.is_none()
        && head.if_modified_since.is_none()
    {
        assert!(matches!(pre, Precondition::Proceed { .. }));
    }
    if let Precondition::Proceed { honor_range } = pre {
        match head.if_range.as_deref() {
            None | Some(ETAG) => assert!(honor_range),
            Some(ir) if ir.starts_with("W/") => assert!(!honor_range),
            _ => {}
        }
        if let (true, Some(range)) = (honor_range, head.range.as_deref()) {
            check_ranges(range, len);
        }
    }
});

/// A decimal line (saturating), 0 when absent or not a number.
fn number(line: Option<&str>) -> u64 {
    let line = line.unwrap_or("").trim();
    line.bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

fn check_ranges(header: &str, len: u64) {
    let outcome = resolve_ranges(header, len);
    let is_bytes = header
        .trim_matches([' ', '\t'])
        .get(..6)
        .is_some_and(|u| u.eq_ignore_ascii_case("bytes="));
    let ranges = match &outcome {
        RangeOutcome::Full => return,
        RangeOutcome::Unsatisfiable => {
            assert!(is_bytes);
            return;
        }
        RangeOutcome::Partial(r) => r,
    };
    assert!(is_bytes);
    assert!(len > 0, "206 for an empty representation");
    let slice = ranges.as_slice();
    for r in slice {
        assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
    }
    for w in slice.windows(2) {
        assert!(
            w[0].end < w[1].start,
            "not ascending/disjoint/non-adjacent: {slice:?}"
        );
    }
    if let Ranges::Many(v) = ranges {
        assert!(v.len() >= 2 && v.len() <= MAX_RANGES);
    }
    assert!(ranges.total_bytes() <= len);
    assert_eq!(ranges.single().is_some(), slice.len() == 1);

    // An independent reading of the header: every spec was valid (else the answer is 200).
    let requested = model(header, len).expect("a 206 for a header the grammar refuses");
    assert!(!requested.is_empty());
    match ranges {
        Ranges::One(r) => {
            let lo = requested.iter().map(|r| r.start).min().unwrap();
            let hi = requested.iter().map(|r| r.end).max().unwrap();
            assert_eq!(*r, lo..hi, "single range is not the cover of {requested:?}");
        }
        Ranges::Many(v) => assert_eq!(*v, merge(requested), "multipart is not the union"),
    }

    // The multipart body laid out for the ranges.
    if slice.len() > 1 {
        let boundary = boundary_for(ETAG);
        let m = Multipart::new(slice, len, "audio/flac", &boundary);
        let pieces = m.pieces();
        assert_eq!(
            m.content_length(),
            pieces.iter().map(Piece::len).sum::<u64>()
        );
        let files: Vec<Range<u64>> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::File(r) => Some(r.clone()),
                Piece::Literal(_) => None,
            })
            .collect();
        assert_eq!(files, slice);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        match pieces.last() {
            Some(Piece::Literal(end)) => {
                assert!(end.ends_with(format!("--{boundary}--\r\n").as_bytes()))
            }
            other => panic!("multipart ends with {other:?}"),
        }
    }
}

/// The satisfiable ranges the header asks for, in its order, or `None` if the header is not a
/// valid `bytes=` range set (RFC 9110 §14.1.1, empty list elements allowed).
fn model(header: &str, len: u64) -> Option<Vec<Range<u64>>> {
    let h = header.trim_matches([' ', '\t']);
    if h.len() < 6 || !h.is_char_boundary(6) || !h[..6].eq_ignore_ascii_case("bytes=") {
        return None;
    }
    let mut out = Vec::new();
    let mut specs = 0;
    for elem in h[6..].split(',') {
        let elem = elem.trim_matches([' ', '\t']);
        if elem.is_empty() {
            continue;
        }
        specs += 1;
        let (a, b) = elem.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        // Saturating far past any u64 length.
        let num = |s: &str| {
            s.bytes()
                .fold(0u128, |n, c| (n * 10 + u128::from(c - b'0')).min(1 << 100))
        };
        let len = u128::from(len);
        let r = if a.is_empty() {
            if !digits(b) {
                return None;
            }
            let n = num(b);
            (n > 0 && len > 0).then(|| len.saturating_sub(n)..len)
        } else {
            if !digits(a) || !(b.is_empty() || digits(b)) {
                return None;
            }
            // last < first spoils the header, compared exactly however long the numbers are.
            if !b.is_empty() && decimal_cmp(b, a).is_lt() {
                return None;
            }
            let first = num(a);
            (first < len).then(|| {
                first..if b.is_empty() {
                    len
                } else {
                    (num(b) + 1).min(len)
                }
            })
        };
        if let Some(r) = r {
            out.push(r.start as u64..r.end as u64);
        }
    }
    (specs > 0).then_some(out)
}

/// Compares two strings of ASCII digits as the numbers they write.
fn decimal_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn merge(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}
