//! Building a response: which representation a request gets (a file part or an album's zip),
//! its head (status, validators, ranges, multipart) and its body as pieces to send.
//!
//! Nothing here sends: a [`Response`] is a head buffer and a list of [`BodyPiece`]s (literal
//! bytes, or ranges of mapped content files) that [`send`](super::send) walks.

use std::ops::Range;
use std::sync::Arc;

use crate::completion::ZipSlice;
use crate::http::{
    self, ContentRange, DateCache, Method, Multipart, Piece as HttpPiece, Precondition,
    RangeOutcome, RequestHead, ResponseHead, Route, Validators,
};
use crate::storage::ItemKind;

use super::resources::{Part, Resource, ZipRep};
use super::segment::MappedFile;

/// One body piece: literal bytes (multipart boundaries, zip headers) or a range of a mapped
/// file.
pub enum BodyPiece {
    Literal(Vec<u8>),
    File {
        file: Arc<MappedFile>,
        start: u64,
        end: u64,
        /// Which part of the item these bytes are (0 for a file, the track index in an album).
        part: u32,
    },
}

impl BodyPiece {
    /// Its length in bytes.
    pub fn size(&self) -> u64 {
        match self {
            BodyPiece::Literal(b) => b.len() as u64,
            BodyPiece::File { start, end, .. } => end - start,
        }
    }
}

/// The response being sent, and how far it got.
pub struct Response {
    /// Whose download this is, when its body is catalog content that counts toward completion.
    pub owner: Option<(Arc<str>, Arc<str>)>,
    pub head: Vec<u8>,
    pub head_sent: usize,
    pub pieces: Vec<BodyPiece>,
    /// The piece being sent.
    pub piece: usize,
    /// Offset inside the current piece.
    pub offset: u64,
    pub keep_alive: bool,
    /// Empty tracks of an album zip this response delivers (see [`EmptyTrack`]).
    pub empties: Vec<EmptyTrack>,
}

/// An empty track inside a zip response: it has no byte to acknowledge, so it is delivered once
/// the client acknowledged the zip up to the end of its entry's local header, `body_end` bytes
/// into the body (the way a 0-byte file is delivered by its head; see
/// [`ConnCredit::start_response`](super::credit::ConnCredit::start_response)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmptyTrack {
    /// The track's part index.
    pub part: u32,
    /// Body bytes (from the first body byte) the client must acknowledge.
    pub body_end: u64,
}

impl Response {
    /// A fresh response, or the connection's last one with its buffers kept.
    pub fn recycle(slot: &mut Option<Box<Response>>) -> Box<Response> {
        match slot.take() {
            Some(mut r) => {
                r.owner = None;
                r.head.clear();
                r.head_sent = 0;
                r.pieces.clear();
                r.piece = 0;
                r.offset = 0;
                r.empties.clear();
                r
            }
            None => Box::new(Response {
                owner: None,
                head: Vec::with_capacity(256),
                head_sent: 0,
                pieces: Vec::new(),
                piece: 0,
                offset: 0,
                keep_alive: true,
                empties: Vec::new(),
            }),
        }
    }

    /// Everything was sent.
    pub fn done(&self) -> bool {
        self.head_sent == self.head.len() && self.piece == self.pieces.len()
    }

    /// Head bytes not yet sent.
    pub fn head_rest(&self) -> usize {
        self.head.len() - self.head_sent
    }

    /// The status code written in the head ("HTTP/1.1 NNN": bytes 9..12 of every head).
    pub fn status(&self) -> u16 {
        self.head
            .get(9..12)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }

    /// Body bytes in all pieces.
    pub fn body_len(&self) -> u64 {
        self.pieces.iter().map(BodyPiece::size).sum()
    }

    /// The content file the next send reads from, if the current piece is one.
    pub fn current_file(&self) -> Option<&MappedFile> {
        match self.pieces.get(self.piece) {
            Some(BodyPiece::File { file, .. }) => Some(file),
            _ => None,
        }
    }
}

/// `Retry-After` of the 503 for an item whose content file is damaged: a restore is a
/// human's job, so not every second.
pub const BAD_BLOB_RETRY_AFTER: &str = "60";

/// Extra headers of a short error response to a well-formed request.
pub fn error_extra(status: u16) -> &'static [(&'static str, &'static str)] {
    match status {
        401 => &[(
            "WWW-Authenticate",
            "Basic realm=\"weir\", charset=\"UTF-8\"",
        )],
        _ => &[],
    }
}

/// Write a short plain-text error response (`head_only`: for a HEAD request).
pub fn error(
    resp: &mut Response,
    date: &mut DateCache,
    status: u16,
    head_only: bool,
    keep_alive: bool,
    extra: &[(&str, &str)],
) {
    let body = http::error_body(status);
    http::write_head(
        &mut resp.head,
        &ResponseHead {
            status,
            content_length: body.len() as u64,
            content_type: "text/plain; charset=utf-8",
            keep_alive,
            etag: None,
            last_modified: None,
            content_range: None,
            accept_ranges: false,
            extra,
        },
        date.now(),
    );
    if !head_only {
        resp.head.extend_from_slice(body);
    }
    resp.keep_alive = keep_alive;
}

/// What a request is served from: one file part, or an album's zip.
pub enum Repr<'a> {
    Part(&'a Part, u32),
    Zip(&'a Resource, &'a ZipRep),
}

impl Repr<'_> {
    /// The representation `head` asks for in `res`, if it has one.
    pub fn select<'a>(head: &RequestHead, res: &'a Resource) -> Option<Repr<'a>> {
        match (http::route(&head.target), res.kind, &res.zip) {
            (Route::Item(id), ItemKind::File, _) if http::zip_album(id).is_none() => {
                res.parts.first().map(|p| Repr::Part(p, 0))
            }
            (Route::Track { n, .. }, ItemKind::Album, _) => {
                let i = n as usize - 1;
                res.parts.get(i).map(|p| Repr::Part(p, i as u32))
            }
            (Route::Item(_) | Route::Zip(_), ItemKind::Album, Some(z)) => Some(Repr::Zip(res, z)),
            _ => None,
        }
    }

    /// Whether every content file this representation is sent from is available (see
    /// [`MappedFile::available`]: a truncated or changed blob is not).
    fn available(&self) -> bool {
        match self {
            Repr::Part(p, _) => p.file.available(),
            Repr::Zip(res, _) => res.parts.iter().all(|p| p.file.available()),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Repr::Part(p, _) => p.file.len(),
            Repr::Zip(_, z) => z.layout.len(),
        }
    }

    fn validators(&self) -> Validators<'_> {
        match self {
            Repr::Part(p, _) => Validators {
                etag: &p.etag,
                last_modified: p.last_modified,
            },
            Repr::Zip(_, z) => Validators {
                etag: &z.etag,
                last_modified: z.last_modified,
            },
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Repr::Part(p, _) => p.content_type,
            Repr::Zip(..) => "application/zip",
        }
    }

    /// `Content-Disposition`: the file name a client saves this representation as.
    fn disposition(&self) -> &str {
        match self {
            Repr::Part(p, _) => &p.disposition,
            Repr::Zip(_, z) => &z.disposition,
        }
    }

    /// Append the body pieces for `range` of this representation to `resp`, and the empty zip
    /// tracks whose local header ends inside `range` to its `empties`.
    fn emit(&self, range: Range<u64>, resp: &mut Response) {
        if range.is_empty() {
            return;
        }
        let out = &mut resp.pieces;
        match self {
            Repr::Part(p, part) => out.push(BodyPiece::File {
                file: p.file.clone(),
                start: range.start,
                end: range.end,
                part: *part,
            }),
            Repr::Zip(res, z) => {
                let body_start: u64 = out.iter().map(BodyPiece::size).sum();
                for (track, part) in res.parts.iter().enumerate() {
                    let Some(data) = z.layout.track_range(track) else {
                        continue;
                    };
                    if part.file.is_empty() && range.start < data.start && data.start <= range.end {
                        resp.empties.push(EmptyTrack {
                            part: track as u32,
                            body_end: body_start + (data.start - range.start),
                        });
                    }
                }
                for slice in z.layout.slice(range) {
                    out.push(match slice {
                        ZipSlice::Literal(bytes) => BodyPiece::Literal(bytes.to_vec()),
                        ZipSlice::Data { track, range } => BodyPiece::File {
                            file: res.parts[track].file.clone(),
                            start: range.start,
                            end: range.end,
                            part: track as u32,
                        },
                    });
                }
            }
        }
    }

    /// Write the response to `head` for this representation: 503 while one of its content
    /// files is damaged, then conditionals, then the full body, one range, several (multipart)
    /// or none satisfiable.
    pub fn respond(
        &self,
        resp: &mut Response,
        date: &mut DateCache,
        head: &RequestHead,
        keep_alive: bool,
    ) {
        let len = self.len();
        let head_only = head.method == Method::Head;
        if !self.available() {
            let retry = [("Retry-After", BAD_BLOB_RETRY_AFTER)];
            error(resp, date, 503, head_only, keep_alive, &retry);
            return;
        }
        let v = self.validators();
        let ctype = self.content_type();
        // On the responses that carry (or, for 304 and HEAD, describe) the content.
        let named = [("Content-Disposition", self.disposition())];
        resp.keep_alive = keep_alive;
        let mut write_head = |resp: &mut Response,
                              status: u16,
                              content_length: u64,
                              content_type: &str,
                              content_range: Option<ContentRange>| {
            http::write_head(
                &mut resp.head,
                &ResponseHead {
                    status,
                    content_length,
                    content_type,
                    keep_alive,
                    etag: Some(v.etag),
                    last_modified: Some(v.last_modified),
                    content_range,
                    accept_ranges: true,
                    extra: if matches!(status, 200 | 206 | 304) {
                        &named
                    } else {
                        &[]
                    },
                },
                date.now(),
            );
        };
        let honor_range = match http::evaluate_preconditions(head, &v) {
            Precondition::NotModified => {
                write_head(resp, 304, len, ctype, None);
                return;
            }
            Precondition::Failed => {
                let body = http::error_body(412);
                write_head(
                    resp,
                    412,
                    body.len() as u64,
                    "text/plain; charset=utf-8",
                    None,
                );
                if !head_only {
                    resp.head.extend_from_slice(body);
                }
                return;
            }
            Precondition::Proceed { honor_range } => honor_range,
        };
        let outcome = match head.range.as_deref() {
            Some(r) if honor_range => http::resolve_ranges(r, len),
            _ => RangeOutcome::Full,
        };
        match outcome {
            RangeOutcome::Full => {
                write_head(resp, 200, len, ctype, None);
                if !head_only {
                    self.emit(0..len, resp);
                }
            }
            RangeOutcome::Unsatisfiable => {
                let body = http::error_body(416);
                let cr = Some(ContentRange::Unsatisfiable { len });
                let text = "text/plain; charset=utf-8";
                write_head(resp, 416, body.len() as u64, text, cr);
                if !head_only {
                    resp.head.extend_from_slice(body);
                }
            }
            RangeOutcome::Partial(ranges) => {
                let boundary = http::boundary_for(v.etag);
                let ranges = match ranges {
                    http::Ranges::Many(many) => http::coalesce(&many, len, ctype, &boundary),
                    one => one,
                };
                let ranges = ranges.as_slice();
                if let [r] = ranges {
                    let cr = Some(ContentRange::of(r, len));
                    write_head(resp, 206, r.end - r.start, ctype, cr);
                    if !head_only {
                        self.emit(r.clone(), resp);
                    }
                } else {
                    let mp = Multipart::new(ranges, len, ctype, &boundary);
                    let mp_type = mp.content_type();
                    write_head(resp, 206, mp.content_length(), &mp_type, None);
                    if !head_only {
                        for p in mp.pieces() {
                            match p {
                                HttpPiece::Literal(bytes) => {
                                    resp.pieces.push(BodyPiece::Literal(bytes.clone()))
                                }
                                HttpPiece::File(r) => self.emit(r.clone(), resp),
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Limits, Parsed};
    use crate::storage::{Blob, Item};

    /// Album `a` of tracks "e1" (empty), "x" (`x_len` bytes), "e3" (empty), as a resource.
    fn album(dir: &std::path::Path, x_len: usize) -> Resource {
        let parts = [("e1", 0), ("x", x_len), ("e3", 0)].map(|(name, len)| {
            let path = dir.join(name);
            std::fs::write(&path, vec![1u8; len]).unwrap();
            Blob {
                sha256: format!("{name:0>64}"),
                size: len as u64,
                crc32: 0,
                name: name.into(),
                mtime: 0,
                path,
            }
        });
        let item = Item {
            id: "a".into(),
            kind: ItemKind::Album,
            name: Some("Ä \"b\"".into()),
            parts: parts.to_vec(),
        };
        Resource::load(&item).unwrap()
    }

    fn get(target: &str, range: Option<&str>) -> RequestHead {
        let range = range.map_or(String::new(), |r| format!("Range: bytes={r}\r\n"));
        let req = format!("GET {target} HTTP/1.1\r\nHost: h\r\n{range}\r\n");
        match parse_request(req.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete { head, .. }) => head,
            _ => panic!("bad request"),
        }
    }

    fn respond(res: &Resource, head: &RequestHead) -> Box<Response> {
        let mut resp = Response::recycle(&mut None);
        Repr::select(head, res)
            .unwrap()
            .respond(&mut resp, &mut DateCache::new(), head, true);
        resp
    }

    /// Each empty track is due once the body reached the end of its local header (30 bytes +
    /// a 2-byte name), counted in body bytes of this response.
    #[test]
    fn empty_tracks_are_due_at_the_end_of_their_local_header() {
        let dir = tempfile::tempdir().unwrap();
        let res = album(dir.path(), 100);
        let e1 = |body_end| EmptyTrack { part: 0, body_end };
        let e3 = |body_end| EmptyTrack { part: 2, body_end };
        // Whole zip: e1's header ends at 32; x's header (31) and data (100) follow; e3 at 195.
        let resp = respond(&res, &get("/d/a.zip", None));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.empties, [e1(32), e3(32 + 31 + 100 + 32)]);
        // A range from byte 100: only e3, 95 bytes into this body.
        let resp = respond(&res, &get("/d/a.zip", Some("100-")));
        assert_eq!(resp.empties, [e3(95)]);
        // A range ending inside e1's header: nothing.
        let resp = respond(&res, &get("/d/a.zip", Some("0-30")));
        assert!(resp.empties.is_empty());
        // Two ranges (multipart): offsets count the boundaries in between.
        let resp = respond(&res, &get("/d/a.zip", Some("0-31,190-194")));
        let text = String::from_utf8_lossy(&resp.head);
        assert!(text.contains("multipart/byteranges"), "{text}");
        // The last piece is the closing boundary; e3's header ends right before it.
        let to_e3_end: u64 = resp.pieces[..resp.pieces.len() - 1]
            .iter()
            .map(BodyPiece::size)
            .sum();
        let first_boundary = resp.pieces[0].size();
        assert_eq!(resp.empties, [e1(first_boundary + 32), e3(to_e3_end)]);
        // A track is no zip: no entries.
        assert!(respond(&res, &get("/d/a/2", None)).empties.is_empty());
    }

    /// The zip and each track carry their names and types.
    #[test]
    fn names_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let res = album(dir.path(), 10);
        let head = String::from_utf8(respond(&res, &get("/d/a.zip", None)).head).unwrap();
        assert!(
            head.contains(
                "\r\nContent-Disposition: attachment; filename=\"_ _b_.zip\"; \
                 filename*=UTF-8''%C3%84%20%22b%22.zip\r\n"
            ),
            "{head}"
        );
        assert!(head.contains("\r\nContent-Type: application/zip\r\n"));
        let head = String::from_utf8(respond(&res, &get("/d/a/2", None)).head).unwrap();
        assert!(
            head.contains("filename=\"x\"; filename*=UTF-8''x\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nContent-Type: application/octet-stream\r\n"));
    }
}
