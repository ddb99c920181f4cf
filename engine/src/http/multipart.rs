//! `multipart/byteranges` bodies (RFC 9110 §14.6) for requests with several ranges.
//!
//! The body's layout is computed up front, so `Content-Length` is exact before a byte is sent
//! and the file parts can be sent straight from mapped file segments:
//!
//! ```text
//! --B\r\nContent-Type: T\r\nContent-Range: bytes a-b/LEN\r\n\r\n<file a..=b>
//! \r\n--B\r\nContent-Type: T\r\nContent-Range: bytes c-d/LEN\r\n\r\n<file c..=d>
//! \r\n--B--\r\n
//! ```
//!
//! (the line breaks between the pieces above are for reading only). The boundary is the
//! caller's, so the same request always gets the same bytes (a retry can resume a multipart
//! response with a Range of its own). [`boundary_for`] derives one from the ETag.
//!
//! Before laying out a body, [`coalesce`] applies RFC 9110 §14.3's advice: ranges whose gap is
//! smaller than a part's headers are merged (sending the gap costs less than a new part), and a
//! multipart body that would be longer than the representation becomes one covering range.
//! So a multi-range reply is never longer than the whole representation.

use std::ops::Range;

use super::range::Ranges;
use super::response::ContentRange;

/// One piece of a multipart body, in sending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes to send as they are: part headers, CRLFs, the closing delimiter.
    Literal(Vec<u8>),
    /// A byte range of the representation (end exclusive).
    File(Range<u64>),
}

impl Piece {
    /// Bytes this piece contributes to the body.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Literal(b) => b.len() as u64,
            Piece::File(r) => r.end - r.start,
        }
    }

    /// Whether the piece is empty (never true for pieces a [`Multipart`] builds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The layout of a `multipart/byteranges` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    boundary: String,
    pieces: Vec<Piece>,
    content_length: u64,
}

impl Multipart {
    /// Lays out the body for `ranges` (non-empty, end exclusive, within `0..len`, as
    /// [`crate::http::resolve_ranges`] returns them) of a representation of type
    /// `content_type` (omitted from the parts when empty). `boundary` must be 1 to 70
    /// characters of RFC 2046 `bchars`, not ending in a space.
    pub fn new(ranges: &[Range<u64>], len: u64, content_type: &str, boundary: &str) -> Multipart {
        debug_assert!(is_boundary(boundary), "invalid boundary {boundary:?}");
        let mut pieces = Vec::with_capacity(2 * ranges.len() + 1);
        let mut lit = Vec::with_capacity(128);
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 {
                lit.extend_from_slice(b"\r\n");
            }
            lit.extend_from_slice(b"--");
            lit.extend_from_slice(boundary.as_bytes());
            lit.extend_from_slice(b"\r\n");
            if !content_type.is_empty() {
                lit.extend_from_slice(b"Content-Type: ");
                lit.extend_from_slice(content_type.as_bytes());
                lit.extend_from_slice(b"\r\n");
            }
            lit.extend_from_slice(b"Content-Range: ");
            ContentRange::of(r, len).write_value(&mut lit);
            lit.extend_from_slice(b"\r\n\r\n");
            pieces.push(Piece::Literal(std::mem::replace(
                &mut lit,
                Vec::with_capacity(128),
            )));
            pieces.push(Piece::File(r.clone()));
        }
        if !ranges.is_empty() {
            lit.extend_from_slice(b"\r\n");
        }
        lit.extend_from_slice(b"--");
        lit.extend_from_slice(boundary.as_bytes());
        lit.extend_from_slice(b"--\r\n");
        pieces.push(Piece::Literal(lit));
        let content_length = pieces.iter().map(Piece::len).sum();
        Multipart {
            boundary: boundary.to_owned(),
            pieces,
            content_length,
        }
    }

    /// The response's `Content-Type`: `multipart/byteranges; boundary=...`.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// The boundary.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The exact body length.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    /// The body as a sequence of pieces: literal bytes (part headers, CRLFs, closing
    /// delimiter) and file ranges.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
}

/// Bytes of the delimiter and part headers in front of `r`'s bytes (the CRLF that ends the
/// previous part included, as if it were not the first part).
fn part_overhead(r: &Range<u64>, len: u64, content_type: &str, boundary: &str) -> u64 {
    let digits = |n: u64| u64::from(n.checked_ilog10().unwrap_or(0) + 1);
    let ct = if content_type.is_empty() {
        0
    } else {
        "Content-Type: \r\n".len() as u64 + content_type.len() as u64
    };
    let cr = "Content-Range: bytes -/\r\n".len() as u64
        + digits(r.start)
        + digits(r.end - 1)
        + digits(len);
    "\r\n--\r\n".len() as u64 + boundary.len() as u64 + ct + cr + "\r\n".len() as u64
}

/// What to send for several satisfiable `ranges` (as [`crate::http::resolve_ranges`] returns
/// them: ascending, disjoint, within `0..len`) of a representation of `len` bytes, RFC 9110
/// §14.3: ranges separated by a gap smaller than the headers of a part are merged; if one range
/// remains it is a single-part reply; and if the multipart body would still be longer than
/// `len`, the answer is the one range covering them all (never much more than the
/// representation).
pub fn coalesce(ranges: &[Range<u64>], len: u64, content_type: &str, boundary: &str) -> Ranges {
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last)
                if r.start.saturating_sub(last.end)
                    < part_overhead(r, len, content_type, boundary) =>
            {
                last.end = last.end.max(r.end);
            }
            _ => merged.push(r.clone()),
        }
    }
    let cover = |m: &[Range<u64>]| match (m.first(), m.last()) {
        (Some(a), Some(b)) => a.start..b.end,
        _ => 0..0,
    };
    if merged.len() <= 1 {
        return Ranges::One(cover(&merged));
    }
    let body: u64 = merged
        .iter()
        .map(|r| r.end - r.start + part_overhead(r, len, content_type, boundary))
        .sum::<u64>()
        + "--\r\n".len() as u64
        + boundary.len() as u64
        + 2;
    if body > len {
        return Ranges::One(cover(&merged));
    }
    Ranges::Many(merged)
}

/// A deterministic boundary for a representation: `weir-` and the ETag's letters and digits
/// (up to 70 characters in all). With ETags derived from content hashes the boundary is a
/// long random-looking string, so it occurring inside the data is practically impossible.
pub fn boundary_for(etag: &str) -> String {
    let mut b = String::with_capacity(70);
    b.push_str("weir-");
    b.extend(
        etag.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(70 - b.len()),
    );
    if b.len() == 5 {
        b.push_str("byteranges");
    }
    b
}

/// RFC 2046 §5.1.1: `0*69<bchars> bcharsnospace`.
fn is_boundary(b: &str) -> bool {
    let bchar = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    (1..=70).contains(&b.len()) && b.bytes().all(bchar) && !b.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assemble(m: &Multipart, file: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for p in m.pieces() {
            match p {
                Piece::Literal(b) => body.extend_from_slice(b),
                Piece::File(r) => body.extend_from_slice(&file[r.start as usize..r.end as usize]),
            }
        }
        body
    }

    #[test]
    fn rfc_shape() {
        let file: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let m = Multipart::new(&[2..5, 30..32], 100, "text/plain", "B0UND");
        let body = assemble(&m, &file);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 2-4/100\r\n\r\ncde\
             \r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 30-31/100\r\n\r\nef\
             \r\n--B0UND--\r\n"
        );
        assert_eq!(m.content_length(), body.len() as u64);
        assert_eq!(m.content_type(), "multipart/byteranges; boundary=B0UND");
        assert_eq!(m.pieces().len(), 5);
        assert!(m.pieces().iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn without_content_type() {
        let m = Multipart::new(&[0..1, 3..4], 4, "", "b");
        assert_eq!(
            assemble(&m, b"wxyz"),
            b"--b\r\nContent-Range: bytes 0-0/4\r\n\r\nw\r\n--b\r\nContent-Range: bytes 3-3/4\r\n\r\nz\r\n--b--\r\n"
        );
    }

    #[test]
    fn boundaries() {
        assert_eq!(boundary_for("\"ab-12\""), "weir-ab12");
        assert_eq!(boundary_for("\"\""), "weir-byteranges");
        let long = boundary_for(&format!("\"{}\"", "f".repeat(200)));
        assert_eq!(long.len(), 70);
        assert!(is_boundary(&long));
        assert!(!is_boundary(""));
        assert!(!is_boundary("a "));
        assert!(!is_boundary("a\r\n"));
    }

    #[test]
    fn part_overhead_is_exact() {
        let m = Multipart::new(&[0..3, 2000..2011], 100_000, "text/plain", "B0UND");
        let Piece::Literal(second) = &m.pieces()[2] else {
            panic!("a literal")
        };
        assert_eq!(
            part_overhead(&(2000..2011), 100_000, "text/plain", "B0UND"),
            second.len() as u64
        );
    }

    #[test]
    fn small_gaps_are_coalesced() {
        // 64 one-byte ranges of a 4 KiB file, 64 bytes apart: sending the gaps is cheaper.
        let ranges: Vec<Range<u64>> = (0..64).map(|i| i * 64..i * 64 + 1).collect();
        let b = "weir-0123456789abcdef0123456789abcdef";
        let out = coalesce(&ranges, 4096, "application/octet-stream", b);
        assert_eq!(out, Ranges::One(0..63 * 64 + 1));
        // Far apart: kept as parts, and the multipart body stays under the length.
        let far = [0..10, 50_000..50_010, 90_000..90_010];
        assert_eq!(
            coalesce(&far, 100_000, "application/octet-stream", b),
            Ranges::Many(far.to_vec())
        );
        // Two parts of a small file whose headers would outweigh it: one covering range.
        assert_eq!(
            coalesce(&[0..1, 199..200], 200, "application/octet-stream", b),
            Ranges::One(0..200)
        );
        // Gaps of mixed sizes: only the small ones merge.
        let mixed = [0..10, 20..30, 10_000..10_010];
        assert_eq!(
            coalesce(&mixed, 100_000, "", b),
            Ranges::Many(vec![0..30, 10_000..10_010])
        );
    }

    proptest! {
        #[test]
        fn coalesced_never_exceeds_the_length(
            cuts in proptest::collection::btree_set(0u64..5000, 4..200),
            len_extra in 0u64..100,
        ) {
            let cuts: Vec<u64> = cuts.into_iter().collect();
            let len = cuts[cuts.len() - 1] + len_extra + 1;
            let ranges: Vec<Range<u64>> = cuts.chunks_exact(2).map(|c| c[0]..c[1]).collect();
            let b = "weir-x";
            let out = coalesce(&ranges, len, "application/zip", b);
            let cover = ranges[0].start..ranges[ranges.len() - 1].end;
            match &out {
                Ranges::One(r) => prop_assert_eq!(r.clone(), cover),
                Ranges::Many(v) => {
                    let m = Multipart::new(v, len, "application/zip", b);
                    prop_assert!(m.content_length() <= len);
                    // Every asked byte is still in some part.
                    for r in &ranges {
                        prop_assert!(v.iter().any(|p| p.start <= r.start && r.end <= p.end));
                    }
                }
            }
        }

        #[test]
        fn length_is_exact(
            cuts in proptest::collection::btree_set(0u64..1000, 2..20),
            ct in "[a-z]{0,10}/[a-z]{1,10}",
        ) {
            let cuts: Vec<u64> = cuts.into_iter().collect();
            let ranges: Vec<Range<u64>> = cuts.chunks_exact(2).map(|c| c[0]..c[1]).collect();
            let file = vec![7u8; 1000];
            let m = Multipart::new(&ranges, 1000, &ct, "weir-x");
            prop_assert_eq!(m.content_length(), assemble(&m, &file).len() as u64);
            let files: Vec<_> = m.pieces().iter().filter_map(|p| match p {
                Piece::File(r) => Some(r.clone()),
                Piece::Literal(_) => None,
            }).collect();
            prop_assert_eq!(files, ranges);
        }
    }
}
