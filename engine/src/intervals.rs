//! A set of delivered byte intervals: merged, half-open `u64` ranges.
//!
//! Per (user, item) weir keeps which bytes of the item reached the client. Deliveries arrive as
//! many small ranges in nearly sorted order (40 connections, each advancing its own range), may
//! overlap (a retry, two connections sending the same bytes) and must count once. The set is a
//! `Vec` of disjoint, non-adjacent ranges sorted by start: an insert binary-searches its place and
//! merges the neighbours it touches, so a connection extending its own interval costs a search
//! and an in-place update, not an allocation.
//!
//! It serializes to a compact byte form ([`IntervalSet::to_bytes`]) for the journal and, through
//! serde, to a list of `[start, end]` pairs; both are validated when read back.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of merged half-open `u64` intervals.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// INVARIANT: sorted by start; every interval non-empty; between two neighbours there is a
    /// gap of at least one byte (adjacent intervals are merged).
    ranges: Vec<(u64, u64)>,
    /// INVARIANT: the sum of the lengths of `ranges`.
    covered: u64,
}

/// Why a serialized interval set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end in the middle of a value.
    #[error("interval set encoding is truncated")]
    Truncated,
    /// The version byte is not one this code writes.
    #[error("unknown interval set encoding version {0}")]
    UnknownVersion(u8),
    /// Bytes remain after the last interval.
    #[error("{0} trailing bytes after the interval set")]
    TrailingBytes(usize),
    /// A varint is longer than a `u64` or an interval ends past `u64::MAX`.
    #[error("interval set value overflows u64")]
    Overflow,
    /// The intervals are empty, unsorted, overlapping or adjacent.
    #[error("interval {index} is empty, unsorted, overlapping or adjacent to the previous one")]
    NotNormalized {
        /// Position of the offending interval.
        index: usize,
    },
}

/// Version byte of [`IntervalSet::to_bytes`].
const ENCODING_V1: u8 = 1;

impl IntervalSet {
    /// An empty set.
    pub fn new() -> IntervalSet {
        IntervalSet::default()
    }

    /// Builds a set from intervals that are already sorted, non-empty, disjoint and
    /// non-adjacent (what [`IntervalSet::iter`] yields); anything else is refused.
    pub fn from_normalized<I>(ranges: I) -> Result<IntervalSet, DecodeError>
    where
        I: IntoIterator<Item = Range<u64>>,
    {
        let mut set = IntervalSet::new();
        for (index, r) in ranges.into_iter().enumerate() {
            let after_previous = match set.ranges.last() {
                Some(&(_, end)) => r.start > end,
                None => true,
            };
            if r.start >= r.end || !after_previous {
                return Err(DecodeError::NotNormalized { index });
            }
            set.covered += r.end - r.start;
            set.ranges.push((r.start, r.end));
        }
        Ok(set)
    }

    /// Adds `range` to the set and returns how many of its bytes were not covered before.
    /// An empty range adds nothing.
    pub fn insert(&mut self, range: Range<u64>) -> u64 {
        let (start, end) = (range.start, range.end);
        if start >= end {
            return 0;
        }
        // Fast path: the newest interval is extended (a connection advancing its range).
        if let Some(last) = self.ranges.last_mut() {
            if last.0 <= start && start <= last.1 {
                let added = end.saturating_sub(last.1);
                last.1 = last.1.max(end);
                self.covered += added;
                return added;
            }
        }
        // Intervals i..j overlap or touch `start..end`.
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        let j = self.ranges.partition_point(|&(s, _)| s <= end);
        if i == j {
            self.ranges.insert(i, (start, end));
            self.covered += end - start;
            return end - start;
        }
        let merged_start = start.min(self.ranges[i].0);
        let merged_end = end.max(self.ranges[j - 1].1);
        let before: u64 = self.ranges[i..j].iter().map(|&(s, e)| e - s).sum();
        let added = (merged_end - merged_start) - before;
        self.ranges[i] = (merged_start, merged_end);
        self.ranges.drain(i + 1..j);
        self.covered += added;
        added
    }

    /// Total number of bytes covered.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Whether every byte of `range` is in the set (an empty range always is).
    pub fn covers(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        let i = self.ranges.partition_point(|&(s, _)| s <= range.start);
        i > 0 && self.ranges[i - 1].1 >= range.end
    }

    /// Whether the set covers `0..len`: an item of `len` bytes was delivered whole.
    pub fn is_complete(&self, len: u64) -> bool {
        self.covers(0..len)
    }

    /// The intervals, sorted, disjoint and non-adjacent.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|&(s, e)| s..e)
    }

    /// The parts of `0..len` not in the set, in order: what a client still has to fetch.
    pub fn gaps(&self, len: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut cursor = 0u64;
        let mut inner = self.ranges.iter();
        let mut done = false;
        std::iter::from_fn(move || loop {
            if done || cursor >= len {
                return None;
            }
            match inner.next() {
                Some(&(s, e)) => {
                    let gap = cursor..s.min(len);
                    cursor = cursor.max(e);
                    if gap.start < gap.end {
                        return Some(gap);
                    }
                }
                None => {
                    done = true;
                    return Some(cursor..len);
                }
            }
        })
    }

    /// Number of intervals (not bytes; see [`IntervalSet::covered`]).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set covers nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Compact encoding for the journal: a version byte, the interval count, then per interval
    /// the gap since the previous end and the length, all as LEB128 varints. A download that
    /// went in order is a handful of bytes whatever the item's size.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.ranges.len() * 6);
        out.push(ENCODING_V1);
        put_varint(&mut out, self.ranges.len() as u64);
        let mut prev_end = 0;
        for &(s, e) in &self.ranges {
            put_varint(&mut out, s - prev_end);
            put_varint(&mut out, e - s);
            prev_end = e;
        }
        out
    }

    /// Reads [`IntervalSet::to_bytes`] back, refusing anything it would not have written.
    pub fn from_bytes(bytes: &[u8]) -> Result<IntervalSet, DecodeError> {
        let (&version, mut rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != ENCODING_V1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let count = get_varint(&mut rest)?;
        let mut set = IntervalSet::new();
        // Each interval takes at least two bytes, which bounds a hostile count.
        set.ranges.reserve((count as usize).min(rest.len() / 2));
        let mut prev_end = 0u64;
        for index in 0..count {
            let gap = get_varint(&mut rest)?;
            let len = get_varint(&mut rest)?;
            let index = index as usize;
            if len == 0 || (gap == 0 && index > 0) {
                return Err(DecodeError::NotNormalized { index });
            }
            let start = prev_end.checked_add(gap).ok_or(DecodeError::Overflow)?;
            let end = start.checked_add(len).ok_or(DecodeError::Overflow)?;
            set.ranges.push((start, end));
            set.covered += len;
            prev_end = end;
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(set)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first().ok_or(DecodeError::Truncated)?;
        *input = rest;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(DecodeError::Overflow);
        }
        value |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Overflow)
}

impl fmt::Debug for IntervalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// JSON form: `[[start, end], ...]`.
impl Serialize for IntervalSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ranges.iter().map(|&(s, e)| [s, e]))
    }
}

impl<'de> Deserialize<'de> for IntervalSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IntervalSet, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(deserializer)?;
        IntervalSet::from_normalized(pairs.into_iter().map(|[s, e]| s..e))
            .map_err(serde::de::Error::custom)
    }
}

impl Extend<Range<u64>> for IntervalSet {
    fn extend<T: IntoIterator<Item = Range<u64>>>(&mut self, iter: T) {
        for r in iter {
            self.insert(r);
        }
    }
}

impl FromIterator<Range<u64>> for IntervalSet {
    fn from_iter<T: IntoIterator<Item = Range<u64>>>(iter: T) -> IntervalSet {
        let mut set = IntervalSet::new();
        set.extend(iter);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNIVERSE: u64 = 200;

    fn assert_normalized(set: &IntervalSet) {
        let mut prev_end = None;
        let mut sum = 0;
        for r in set.iter() {
            assert!(r.start < r.end, "empty interval in {set:?}");
            if let Some(p) = prev_end {
                assert!(r.start > p, "unsorted, overlapping or adjacent: {set:?}");
            }
            prev_end = Some(r.end);
            sum += r.end - r.start;
        }
        assert_eq!(sum, set.covered());
    }

    fn arb_range() -> impl Strategy<Value = Range<u64>> {
        (0..UNIVERSE, 0..40u64).prop_map(|(s, l)| s..(s + l).min(UNIVERSE))
    }

    proptest! {
        #[test]
        fn matches_a_bitmap_model(ops in prop::collection::vec(arb_range(), 0..60)) {
            let mut set = IntervalSet::new();
            let mut model = vec![false; UNIVERSE as usize];
            for r in ops {
                let newly = model[r.start as usize..r.end as usize].iter().filter(|b| !**b).count();
                model[r.start as usize..r.end as usize].iter_mut().for_each(|b| *b = true);
                prop_assert_eq!(set.insert(r.clone()), newly as u64);
                assert_normalized(&set);
                prop_assert_eq!(set.covered(), model.iter().filter(|b| **b).count() as u64);
            }
            // covers() and gaps() agree with the model.
            for s in 0..UNIVERSE {
                for e in [s, s + 1, s + 7, UNIVERSE] {
                    let e = e.min(UNIVERSE);
                    let model_covers = model[s as usize..e as usize].iter().all(|b| *b);
                    prop_assert_eq!(set.covers(s..e), model_covers, "{}..{}", s, e);
                }
            }
            let mut gap_model = vec![false; UNIVERSE as usize];
            for g in set.gaps(UNIVERSE) {
                prop_assert!(g.start < g.end);
                gap_model[g.start as usize..g.end as usize].iter_mut().for_each(|b| *b = true);
            }
            prop_assert!(gap_model.iter().zip(&model).all(|(g, m)| g != m));
            prop_assert_eq!(set.is_complete(UNIVERSE), model.iter().all(|b| *b));
            // Both encodings round-trip.
            let back = IntervalSet::from_bytes(&set.to_bytes()).unwrap();
            prop_assert_eq!(&back, &set);
            let json = serde_json::to_string(&set).unwrap();
            prop_assert_eq!(serde_json::from_str::<IntervalSet>(&json).unwrap(), set);
        }

        #[test]
        fn insertion_order_does_not_matter(mut ops in prop::collection::vec(arb_range(), 0..30)) {
            let forward: IntervalSet = ops.iter().cloned().collect();
            ops.reverse();
            let backward: IntervalSet = ops.into_iter().collect();
            prop_assert_eq!(forward, backward);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(set) = IntervalSet::from_bytes(&bytes) {
                assert_normalized(&set);
                prop_assert_eq!(IntervalSet::from_bytes(&set.to_bytes()), Ok(set));
            }
        }
    }

    #[test]
    fn two_connections_delivering_the_same_range_count_once() {
        let mut set = IntervalSet::new();
        assert_eq!(set.insert(100..200), 100);
        assert_eq!(set.insert(100..200), 0);
        assert_eq!(set.insert(150..250), 50);
        assert_eq!(set.covered(), 150);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn adjacent_intervals_merge_and_complete() {
        let mut set = IntervalSet::new();
        set.insert(10..20);
        set.insert(0..10);
        set.insert(20..30);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0..30]);
        assert!(set.is_complete(30));
        assert!(!set.is_complete(31));
        assert!(IntervalSet::new().is_complete(0));
    }

    #[test]
    fn forty_interleaved_connections_stay_forty_intervals() {
        let part = 1 << 20;
        let mut set = IntervalSet::new();
        for chunk in 0..64u64 {
            for conn in 0..40u64 {
                let at = conn * part + chunk * 4096;
                set.insert(at..at + 4096);
            }
        }
        assert_eq!(set.len(), 40);
        assert_eq!(set.covered(), 40 * 64 * 4096);
        let bytes = set.to_bytes();
        assert!(bytes.len() < 40 * 8, "{} bytes", bytes.len());
    }

    #[test]
    fn decoding_refuses_non_normalized_input() {
        assert_eq!(IntervalSet::from_bytes(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            IntervalSet::from_bytes(&[9, 0]),
            Err(DecodeError::UnknownVersion(9))
        );
        // Two intervals with a zero gap between them: adjacent.
        assert_eq!(
            IntervalSet::from_bytes(&[1, 2, 0, 5, 0, 5]),
            Err(DecodeError::NotNormalized { index: 1 })
        );
        assert_eq!(
            IntervalSet::from_bytes(&[1, 1, 0, 5, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(serde_json::from_str::<IntervalSet>("[[5,9],[0,2]]").is_err());
        assert!(serde_json::from_str::<IntervalSet>("[[5,5]]").is_err());
        let huge = [
            1, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1, 1,
        ];
        assert_eq!(IntervalSet::from_bytes(&huge), Err(DecodeError::Overflow));
    }
}
