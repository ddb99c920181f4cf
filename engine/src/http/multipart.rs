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

use std::ops::Range;

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

    proptest! {
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
