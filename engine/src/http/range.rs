//! Byte ranges (RFC 9110 §14): turn a `Range` header and a representation length into what to
//! send.
//!
//! - Only the `bytes` unit is understood (case-insensitively). Another unit, or a header that
//!   is not syntactically valid as a whole (one bad element spoils all, as does `last < first`),
//!   is ignored: [`RangeOutcome::Full`], a 200.
//! - `a-b`, `a-` and `-n` are understood; `b` past the end is clamped, a suffix longer than the
//!   representation means all of it, a first position at or past the end (or `-0`) is
//!   unsatisfiable and dropped. If nothing satisfiable remains (always so when `len` is 0) the
//!   answer is [`RangeOutcome::Unsatisfiable`], a 416.
//! - Several ranges are sorted and overlapping or adjacent ones merged (RFC 9110 §14.3 allows
//!   it); the result is in ascending order, whatever order the client asked in. Ranges with
//!   small gaps are merged later, by [`crate::http::coalesce`], which knows the part overhead.
//! - **Abuse policy**: more than [`MAX_RANGES`] satisfiable ranges, or more than
//!   [`MAX_OVERLAPS`] overlaps among them, is not served as a multipart body: the answer is the
//!   single range covering them all (a 206 whose body contains every byte asked for, at the
//!   offsets asked for). Cost stays linear in the header and the work stays bounded.
//!
//! The common case (one range) does not allocate.

use std::ops::Range;

/// Above this many satisfiable ranges, a request is answered with one covering range.
pub const MAX_RANGES: usize = 64;
/// Above this many overlaps between requested ranges, a request is answered with one covering
/// range (RFC 9110 §14.3 names "more than two overlapping ranges" as a sign of abuse).
pub const MAX_OVERLAPS: usize = 2;

/// Satisfiable ranges, end exclusive: non-empty, within `0..len`, ascending, disjoint and not
/// adjacent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// Exactly one range (no allocation): a single-part 206.
    One(Range<u64>),
    /// Two or more: a `multipart/byteranges` 206.
    Many(Vec<Range<u64>>),
}

impl Ranges {
    /// The ranges as a slice.
    pub fn as_slice(&self) -> &[Range<u64>] {
        match self {
            Ranges::One(r) => std::slice::from_ref(r),
            Ranges::Many(v) => v,
        }
    }

    /// The sole range, if there is exactly one.
    pub fn single(&self) -> Option<Range<u64>> {
        match self {
            Ranges::One(r) => Some(r.clone()),
            Ranges::Many(_) => None,
        }
    }

    /// Total number of representation bytes selected.
    pub fn total_bytes(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end - r.start).sum()
    }
}

/// What a `Range` header asks of a representation of a given length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No Range, or a Range header we must ignore (not `bytes=`, syntactically invalid): 200.
    Full,
    /// Satisfiable ranges: 206.
    Partial(Ranges),
    /// Nothing satisfiable: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Resolves a raw `Range` header value against a representation of `len` bytes.
pub fn resolve_ranges(header: &str, len: u64) -> RangeOutcome {
    let Some(set) = strip_bytes_unit(header.trim_matches([' ', '\t'])) else {
        return RangeOutcome::Full;
    };
    let mut specs = 0usize;
    let mut first: Option<Range<u64>> = None;
    let mut rest: Vec<Range<u64>> = Vec::new();
    let mut satisfiable = 0usize;
    let (mut lo, mut hi) = (u64::MAX, 0u64); // the covering range, once one is seen
    for elem in set.split(',') {
        let elem = elem.trim_matches([' ', '\t']);
        if elem.is_empty() {
            continue; // RFC 9110 §5.6.1: empty list elements are allowed and ignored
        }
        let Some(spec) = parse_spec(elem) else {
            return RangeOutcome::Full;
        };
        specs += 1;
        let Some(r) = spec.satisfy(len) else {
            continue;
        };
        satisfiable += 1;
        (lo, hi) = (lo.min(r.start), hi.max(r.end));
        if first.is_none() {
            first = Some(r);
        } else if satisfiable <= MAX_RANGES {
            rest.push(r);
        } else if !rest.is_empty() {
            rest = Vec::new(); // abusive: only the cover matters from now on
        }
    }
    if specs == 0 {
        return RangeOutcome::Full; // `bytes=` with no range-spec at all is invalid
    }
    let Some(first) = first else {
        return RangeOutcome::Unsatisfiable;
    };
    if rest.is_empty() && satisfiable == 1 {
        return RangeOutcome::Partial(Ranges::One(first));
    }
    if satisfiable > MAX_RANGES {
        return RangeOutcome::Partial(Ranges::One(lo..hi));
    }
    rest.push(first);
    rest.sort_unstable_by_key(|r| (r.start, r.end));
    let mut overlaps = 0usize;
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(rest.len());
    for r in rest {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => {
                if r.start < last.end {
                    overlaps += 1;
                }
                last.end = last.end.max(r.end);
            }
            _ => merged.push(r),
        }
    }
    if overlaps > MAX_OVERLAPS || merged.len() == 1 {
        return RangeOutcome::Partial(Ranges::One(lo..hi));
    }
    RangeOutcome::Partial(Ranges::Many(merged))
}

/// `bytes=` (unit case-insensitive, no whitespace around `=`) stripped, or `None`.
fn strip_bytes_unit(h: &str) -> Option<&str> {
    let (unit, set) = h.split_at_checked(6)?;
    unit.eq_ignore_ascii_case("bytes=").then_some(set)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-` or `first-last`.
    Int { first: u64, last: Option<u64> },
    /// `-n`.
    Suffix(u64),
}

impl Spec {
    fn satisfy(self, len: u64) -> Option<Range<u64>> {
        match self {
            Spec::Int { first, last } => {
                if first >= len {
                    return None;
                }
                let end = last.map_or(len, |l| l.saturating_add(1).min(len));
                Some(first..end)
            }
            Spec::Suffix(n) => (n > 0 && len > 0).then(|| len.saturating_sub(n)..len),
        }
    }
}

fn parse_spec(s: &str) -> Option<Spec> {
    let (a, b) = s.split_once('-')?;
    if a.is_empty() {
        return Some(Spec::Suffix(digits(b)?));
    }
    let first = digits(a)?;
    if b.is_empty() {
        return Some(Spec::Int { first, last: None });
    }
    let last = digits(b)?;
    // Both past u64::MAX saturate to it: compare what was written (found by fuzzing).
    let ordered = if first == u64::MAX && last == u64::MAX {
        decimal_ge(b, a)
    } else {
        last >= first
    };
    ordered.then_some(Spec::Int {
        first,
        last: Some(last),
    })
}

/// One or more ASCII digits; values past `u64::MAX` saturate (they are past any end anyway).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Whether the digit string `a` writes a number at least as large as `b` does, however long.
fn decimal_ge(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) >= (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeOutcome::{Full, Unsatisfiable};

    fn one(r: Range<u64>) -> RangeOutcome {
        RangeOutcome::Partial(Ranges::One(r))
    }

    fn many(v: &[Range<u64>]) -> RangeOutcome {
        RangeOutcome::Partial(Ranges::Many(v.to_vec()))
    }

    #[test]
    fn single_forms() {
        assert_eq!(resolve_ranges("bytes=0-499", 10_000), one(0..500));
        assert_eq!(resolve_ranges("bytes=500-999", 10_000), one(500..1000));
        assert_eq!(resolve_ranges("bytes=9000-", 10_000), one(9000..10_000));
        assert_eq!(resolve_ranges("bytes=-500", 10_000), one(9500..10_000));
        assert_eq!(resolve_ranges("bytes=-20000", 10_000), one(0..10_000));
        assert_eq!(resolve_ranges("bytes=0-0", 1), one(0..1));
        assert_eq!(
            resolve_ranges("bytes=9999-99999", 10_000),
            one(9999..10_000)
        );
        assert_eq!(resolve_ranges("BYTES=1-2", 10), one(1..3));
        assert_eq!(resolve_ranges(" bytes=1-2 ", 10), one(1..3));
        assert_eq!(
            resolve_ranges("bytes=0-99999999999999999999999", 10),
            one(0..10)
        );
        assert_eq!(
            resolve_ranges("bytes=-99999999999999999999999", 10),
            one(0..10)
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(resolve_ranges("bytes=10000-", 10_000), Unsatisfiable);
        assert_eq!(resolve_ranges("bytes=10000-20000", 10_000), Unsatisfiable);
        assert_eq!(resolve_ranges("bytes=-0", 10_000), Unsatisfiable);
        assert_eq!(
            resolve_ranges("bytes=99999999999999999999-", 10),
            Unsatisfiable
        );
        assert_eq!(resolve_ranges("bytes=20-30, 40-", 10), Unsatisfiable);
        for h in ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=0-1,-5"] {
            assert_eq!(resolve_ranges(h, 0), Unsatisfiable, "{h}");
        }
        // Unsatisfiable ones are dropped from a mix.
        assert_eq!(resolve_ranges("bytes=50-60,0-1", 10), one(0..2));
    }

    #[test]
    fn ignored_headers_are_full() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes =0-1",
            "bytes= 0-1,x",
            "items=0-1",
            "bytes=1-0",
            "bytes=a-b",
            "bytes=0-1-2",
            "bytes=--1",
            "bytes=1",
            "bytes=-",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1 -2",
            "bytes=0-1;x",
            "bytes=0-1,5-4",
            "bytes=٣-٤",
        ] {
            assert_eq!(resolve_ranges(h, 100), Full, "{h:?}");
        }
    }

    #[test]
    fn last_before_first_is_invalid_past_u64() {
        // Found by fuzz/fuzz_targets/range_conditional.rs: both positions saturated to
        // u64::MAX, so `last < first` went unnoticed and the header's other ranges were served.
        let big = "99999999999999999999999";
        let smaller = "99999999999999999999998";
        assert_eq!(
            resolve_ranges(&format!("bytes=0-9,{big}-{smaller}"), 100),
            Full
        );
        assert_eq!(resolve_ranges(&format!("bytes={big}0-{big}"), 100), Full);
        // In order, they are valid and unsatisfiable (dropped from a mix), leading zeros or not.
        assert_eq!(
            resolve_ranges(&format!("bytes=0-9,{smaller}-{big}"), 100),
            one(0..10)
        );
        assert_eq!(
            resolve_ranges(&format!("bytes=0-9,{big}-000{big}"), 100),
            one(0..10)
        );
        assert_eq!(
            resolve_ranges(&format!("bytes={big}-{big}"), 100),
            Unsatisfiable
        );
        // One saturated side is decided by the numbers alone.
        assert_eq!(resolve_ranges(&format!("bytes=5-{big}"), 100), one(5..100));
        assert_eq!(resolve_ranges(&format!("bytes={big}-5"), 100), Full);
    }

    #[test]
    fn multiple_are_sorted_and_coalesced() {
        assert_eq!(
            resolve_ranges("bytes=500-599, 0-99", 1000),
            many(&[0..100, 500..600])
        );
        assert_eq!(resolve_ranges("bytes=0-99,100-199", 1000), one(0..200));
        assert_eq!(resolve_ranges("bytes=0-99,50-149", 1000), one(0..150));
        assert_eq!(
            resolve_ranges("bytes=0-9,,  20-29 ,\t-10", 100),
            many(&[0..10, 20..30, 90..100])
        );
        assert_eq!(
            resolve_ranges("bytes=0-9,5-14,30-39,35-44", 100),
            many(&[0..15, 30..45])
        );
        // Adjacency is not overlap.
        let adjacent: Vec<String> = (0..40).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            resolve_ranges(&format!("bytes={}", adjacent.join(",")), 100),
            one(0..40)
        );
    }

    #[test]
    fn abusive_requests_get_one_covering_range() {
        // Many small overlapping ranges.
        assert_eq!(
            resolve_ranges("bytes=0-10,1-11,2-12,3-13,50-60", 100),
            one(0..61)
        );
        // The same range over and over.
        let same = vec!["5-6"; 1000].join(",");
        assert_eq!(resolve_ranges(&format!("bytes={same}"), 100), one(5..7));
        // More than MAX_RANGES disjoint ranges.
        let at = |n: usize| {
            (0..n)
                .map(|i| format!("{}-{}", 2 * i, 2 * i))
                .collect::<Vec<_>>()
                .join(",")
        };
        match resolve_ranges(&format!("bytes={}", at(MAX_RANGES)), 1000) {
            RangeOutcome::Partial(r) => assert_eq!(r.as_slice().len(), MAX_RANGES),
            other => panic!("{other:?}"),
        }
        let n = MAX_RANGES + 1;
        assert_eq!(
            resolve_ranges(&format!("bytes={}", at(n)), 1000),
            one(0..(2 * n as u64 - 1))
        );
    }

    #[test]
    fn accessors() {
        let r = Ranges::Many(vec![0..10, 20..25]);
        assert_eq!(r.as_slice(), &[0..10, 20..25]);
        assert_eq!(r.total_bytes(), 15);
        assert_eq!(r.single(), None);
        assert_eq!(Ranges::One(3..4).single(), Some(3..4));
        let one = Ranges::One(3..4);
        assert_eq!(
            (one.as_slice().len(), one.as_slice().first()),
            (1, Some(&(3..4)))
        );
    }

    /// The reference model for one range-spec.
    fn model(first: Option<u64>, last: Option<u64>, len: u64) -> RangeOutcome {
        match (first, last) {
            (Some(f), Some(l)) if l < f => Full,
            (Some(f), _) if f >= len => Unsatisfiable,
            (Some(f), Some(l)) => one(f..(l + 1).min(len)),
            (Some(f), None) => one(f..len),
            (None, Some(0)) => Unsatisfiable,
            (None, Some(_)) if len == 0 => Unsatisfiable,
            (None, Some(n)) => one(len - n.min(len)..len),
            (None, None) => Full,
        }
    }

    fn show(v: Option<u64>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }

    fn spec() -> impl Strategy<Value = (Option<u64>, Option<u64>)> {
        let n = prop_oneof![0u64..50, 0u64..u64::MAX - 1];
        (proptest::option::of(n.clone()), proptest::option::of(n))
    }

    proptest! {
        #[test]
        fn single_matches_model((first, last) in spec(), len in prop_oneof![0u64..60, any::<u64>()]) {
            let h = format!("bytes={}-{}", show(first), show(last));
            prop_assert_eq!(resolve_ranges(&h, len), model(first, last, len));
        }

        #[test]
        fn invariants(specs in proptest::collection::vec(spec(), 1..80), len in 0u64..200) {
            let list: Vec<String> = specs
                .iter()
                .filter(|(f, l)| f.is_some() || l.is_some())
                .filter(|(f, l)| !matches!((f, l), (Some(f), Some(l)) if l < f))
                .map(|(f, l)| format!("{}-{}", show(*f), show(*l)))
                .collect();
            let h = format!("bytes={}", list.join(" ,"));
            match resolve_ranges(&h, len) {
                RangeOutcome::Partial(r) => {
                    let s = r.as_slice();
                    prop_assert!(!s.is_empty());
                    for w in s.windows(2) {
                        prop_assert!(w[0].end < w[1].start, "sorted, disjoint: {:?}", s);
                    }
                    for x in s {
                        prop_assert!(x.start < x.end && x.end <= len);
                    }
                    prop_assert!(matches!(r, Ranges::One(_)) == (s.len() == 1));
                }
                RangeOutcome::Unsatisfiable => {}
                RangeOutcome::Full => prop_assert!(list.is_empty(), "{}", h),
            }
        }

        #[test]
        fn never_panics(s in ".{0,100}", len in any::<u64>()) {
            let _ = resolve_ranges(&s, len);
            let _ = resolve_ranges(&format!("bytes={s}"), len);
        }

        #[test]
        fn near_syntax_never_panics(s in "bytes=[0-9, \t,-]{0,60}", len in 0u64..100) {
            let _ = resolve_ranges(&s, len);
        }
    }
}
