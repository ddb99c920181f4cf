//! HTTP/1.1 response heads (parsed with httparse, zero-copy) and body framing
//! (Content-Length, chunked, or until close).
//!
//! The decoder never copies body bytes: it tells the caller which part of the bytes it was given
//! is payload, so the payload can go straight from the read buffer into a hash or a counter.

/// What weir-load needs from a response head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<ContentRange>,
    pub chunked: bool,
    pub keep_alive: bool,
    /// Length of the head in bytes, blank line included.
    pub len: usize,
}

/// A `Content-Range: bytes FIRST-LAST/TOTAL` (or `bytes */TOTAL`) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// Inclusive range, or `None` for `*` (the 416 form).
    pub range: Option<(u64, u64)>,
    /// Complete length, or `None` for `*`.
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parse the header value.
    pub fn parse(v: &str) -> Option<ContentRange> {
        let rest = v.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        let range = match range.trim() {
            "*" => None,
            r => {
                let (a, b) = r.split_once('-')?;
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                Some((a, b))
            }
        };
        Some(ContentRange { range, total })
    }
}

/// Result of trying to parse a head from the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadParse {
    Complete(Head),
    Partial,
    Invalid,
}

/// Heads larger than this are refused (`bad_response`): a sane server's are well under 1 KiB.
pub const MAX_HEAD: usize = 64 * 1024;

/// Parse a response head from the start of `buf`. Interim 1xx responses are not expected for GET
/// and are treated as the response.
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return HeadParse::Partial,
        _ => return HeadParse::Invalid,
    };
    let status = resp.code.unwrap_or(0);
    let mut head = Head {
        status,
        keep_alive: resp.version == Some(1),
        len,
        ..Head::default()
    };
    for h in resp.headers.iter() {
        // Match the name first: only the four headers used here pay for UTF-8 checks.
        let name = h.name.as_bytes();
        let wanted = match name.len() {
            10 => name.eq_ignore_ascii_case(b"connection"),
            13 => name.eq_ignore_ascii_case(b"content-range"),
            14 => name.eq_ignore_ascii_case(b"content-length"),
            17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
            _ => false,
        };
        if !wanted {
            continue;
        }
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.trim(),
            Err(_) => continue,
        };
        match name.len() {
            14 => match value.parse::<u64>() {
                Ok(n) if head.content_length.is_none_or(|m| m == n) => {
                    head.content_length = Some(n)
                }
                _ => return HeadParse::Invalid,
            },
            17 => {
                if value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                {
                    head.chunked = true;
                }
            }
            10 => {
                for token in value.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
            _ => {
                head.content_range = ContentRange::parse(value);
                if head.content_range.is_none() {
                    return HeadParse::Invalid;
                }
            }
        }
    }
    HeadParse::Complete(head)
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size { size: u64, digits: u8 },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    FinalLf,
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes used by this step.
    pub consumed: usize,
    /// Payload bytes inside the consumed input (a sub-range of it).
    pub data: std::ops::Range<usize>,
}

/// The body framing was broken (a bad chunk size line).
#[derive(Debug, PartialEq, Eq)]
pub struct BadFraming;

/// A body decoder for one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyDecoder {
    framing: Framing,
}

impl BodyDecoder {
    /// The decoder for a response to a GET with this head.
    pub fn for_head(head: &Head) -> BodyDecoder {
        let framing = if head.status < 200 || head.status == 204 || head.status == 304 {
            Framing::Done
        } else if head.chunked {
            Framing::Chunked(Chunk::Size { size: 0, digits: 0 })
        } else if let Some(n) = head.content_length {
            if n == 0 {
                Framing::Done
            } else {
                Framing::Length(n)
            }
        } else {
            Framing::UntilClose
        };
        BodyDecoder { framing }
    }

    /// True once the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// True when only the peer closing the connection ends the body.
    pub fn until_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    /// Payload bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// Decode from `input`. Call again with `&input[step.consumed..]` until all input is
    /// consumed or [`BodyDecoder::is_done`]; bytes left over after done are not part of the body.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, BadFraming> {
        match &mut self.framing {
            Framing::Done => Ok(Step {
                consumed: 0,
                data: 0..0,
            }),
            Framing::UntilClose => Ok(Step {
                consumed: input.len(),
                data: 0..input.len(),
            }),
            Framing::Length(rem) => {
                let n = (*rem).min(input.len() as u64) as usize;
                *rem -= n as u64;
                if *rem == 0 {
                    self.framing = Framing::Done;
                }
                Ok(Step {
                    consumed: n,
                    data: 0..n,
                })
            }
            Framing::Chunked(chunk) => {
                if let Chunk::Data(rem) = chunk {
                    let n = (*rem).min(input.len() as u64) as usize;
                    *rem -= n as u64;
                    if *rem == 0 {
                        *chunk = Chunk::DataCr;
                    }
                    return Ok(Step {
                        consumed: n,
                        data: 0..n,
                    });
                }
                // Control bytes: walk them one at a time until data starts or input ends.
                let mut i = 0;
                while i < input.len() {
                    let b = input[i];
                    i += 1;
                    let next = match *chunk {
                        Chunk::Size { size, digits } => match b {
                            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                                if digits >= 15 {
                                    return Err(BadFraming);
                                }
                                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                                Chunk::Size {
                                    size: size * 16 + d,
                                    digits: digits + 1,
                                }
                            }
                            b';' | b' ' | b'\t' if digits > 0 => Chunk::Ext { size },
                            b'\r' if digits > 0 => Chunk::SizeLf { size },
                            _ => return Err(BadFraming),
                        },
                        Chunk::Ext { size } => {
                            if b == b'\r' {
                                Chunk::SizeLf { size }
                            } else {
                                Chunk::Ext { size }
                            }
                        }
                        Chunk::SizeLf { size } => {
                            if b != b'\n' {
                                return Err(BadFraming);
                            }
                            if size == 0 {
                                Chunk::TrailerStart
                            } else {
                                *chunk = Chunk::Data(size);
                                return Ok(Step {
                                    consumed: i,
                                    data: i..i,
                                });
                            }
                        }
                        Chunk::DataCr => {
                            if b != b'\r' {
                                return Err(BadFraming);
                            }
                            Chunk::DataLf
                        }
                        Chunk::DataLf => {
                            if b != b'\n' {
                                return Err(BadFraming);
                            }
                            Chunk::Size { size: 0, digits: 0 }
                        }
                        Chunk::TrailerStart => match b {
                            b'\r' => Chunk::FinalLf,
                            b'\n' => {
                                self.framing = Framing::Done;
                                return Ok(Step {
                                    consumed: i,
                                    data: i..i,
                                });
                            }
                            _ => Chunk::Trailer,
                        },
                        Chunk::Trailer => {
                            if b == b'\n' {
                                Chunk::TrailerStart
                            } else {
                                Chunk::Trailer
                            }
                        }
                        Chunk::FinalLf => {
                            if b != b'\n' {
                                return Err(BadFraming);
                            }
                            self.framing = Framing::Done;
                            return Ok(Step {
                                consumed: i,
                                data: i..i,
                            });
                        }
                        Chunk::Data(_) => unreachable!("handled above"),
                    };
                    *chunk = next;
                }
                Ok(Step {
                    consumed: i,
                    data: i..i,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        dec: &mut BodyDecoder,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, BadFraming> {
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            let mut off = 0;
            while off < piece.len() && !dec.is_done() {
                let step = dec.step(&piece[off..])?;
                out.extend_from_slice(&piece[off..][step.data.clone()]);
                off += step.consumed;
            }
        }
        Ok(out)
    }

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1\r\nContent-Range: bytes 0-0/1234\r\n\r\nX";
        let HeadParse::Complete(h) = parse_head(raw) else {
            panic!()
        };
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(1));
        assert_eq!(
            h.content_range,
            Some(ContentRange {
                range: Some((0, 0)),
                total: Some(1234)
            })
        );
        assert!(h.keep_alive);
        assert_eq!(h.len, raw.len() - 1);
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"),
            HeadParse::Partial
        );
        assert_eq!(parse_head(b"garbage\r\n\r\n"), HeadParse::Invalid);
        let HeadParse::Complete(h) =
            parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")
        else {
            panic!()
        };
        assert!(h.keep_alive);
        let HeadParse::Complete(h) = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        else {
            panic!()
        };
        assert!(!h.keep_alive);
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HeadParse::Invalid
        );
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            ContentRange::parse("bytes */99"),
            Some(ContentRange {
                range: None,
                total: Some(99)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 5-9/*"),
            Some(ContentRange {
                range: Some((5, 9)),
                total: None
            })
        );
        assert_eq!(ContentRange::parse("bytes 9-5/10"), None);
        assert_eq!(ContentRange::parse("items 1-2/3"), None);
    }

    #[test]
    fn length_framing() {
        let head = Head {
            status: 200,
            content_length: Some(5),
            ..Head::default()
        };
        let mut d = BodyDecoder::for_head(&head);
        let step = d.step(b"helloEXTRA").unwrap();
        assert_eq!(step.consumed, 5);
        assert!(d.is_done());
    }

    #[test]
    fn chunked_rejects_garbage_sizes() {
        let head = Head {
            status: 200,
            chunked: true,
            ..Head::default()
        };
        let mut d = BodyDecoder::for_head(&head);
        assert_eq!(decode_all(&mut d, b"zz\r\n", 4), Err(BadFraming));
    }

    #[test]
    fn chunked_framing_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..body.len() {
            let head = Head {
                status: 200,
                chunked: true,
                ..Head::default()
            };
            let mut d = BodyDecoder::for_head(&head);
            let out = decode_all(&mut d, body, split).unwrap();
            assert_eq!(out, b"hello  world");
            assert!(d.is_done());
        }
    }

    proptest::proptest! {
        /// Nothing a server sends can panic the head parser or the chunked decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&bytes);
            let _ = ContentRange::parse(&String::from_utf8_lossy(&bytes));
            let head = Head { status: 200, chunked: true, ..Head::default() };
            let mut d = BodyDecoder::for_head(&head);
            let mut off = 0;
            while off < bytes.len() && !d.is_done() {
                match d.step(&bytes[off..]) {
                    Ok(step) => {
                        proptest::prop_assert!(step.data.end <= bytes.len() - off);
                        if step.consumed == 0 { break; }
                        off += step.consumed;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
