//! Request heads: parse, validate and copy out the few fields weir acts on.
//!
//! [`parse_request`] runs `httparse` over the connection's read buffer (no allocation per header:
//! the header slots live on the stack), then applies weir's own rules:
//!
//! - only GET and HEAD are served; anything else (`OPTIONS *` and `CONNECT host:port`
//!   included) is [`RequestError::MethodNotAllowed`], decided
//!   after the whole head has been read and validated;
//! - weir never reads a request body, so every shape that could smuggle one is refused with 400:
//!   any `Transfer-Encoding`, a `Content-Length` that is repeated (even with equal values), not
//!   plain decimal, or non-zero on GET/HEAD;
//! - `httparse` already refuses obs-fold and whitespace between a field name and its colon in
//!   requests (both are tested here);
//! - `Host` must be an RFC 3986 authority without userinfo (RFC 9112 §3.2): `Host: a b` and
//!   `Host: a@b` are 400;
//! - size limits ([`Limits`]) turn into 414 and 431 as early as the bytes seen allow.
//!
//! After any [`RequestError`] the connection answers with [`RequestError::status`] and closes.

use std::mem::MaybeUninit;

/// Upper bound on header slots reserved on the stack; [`Limits::max_headers`] is clamped to it.
pub const MAX_HEADERS_CAP: usize = 128;

/// Size limits for a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The request line, the header fields and the blank line must fit in this many bytes (431).
    pub max_head_bytes: usize,
    /// At most this many header fields (431); clamped to [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
    /// At most this many bytes of request target, query included (414).
    pub max_target_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8192,
            max_headers: 64,
            max_target_len: 2048,
        }
    }
}

/// The methods weir serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the same head as GET, no body.
    Head,
}

/// Owned, small request head (the connection's read buffer is reused, so copy only what is
/// needed). Header values are trimmed of surrounding whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// GET or HEAD.
    pub method: Method,
    /// The path, always starting with `/`, without the query (absolute-form is reduced to it).
    pub target: String,
    /// The raw query after `?`, if any (possibly empty).
    pub query: Option<String>,
    /// The request was HTTP/1.0.
    pub http10: bool,
    /// Whether the connection may stay open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Raw `Range` value.
    pub range: Option<String>,
    /// Raw `If-Range` value.
    pub if_range: Option<String>,
    /// Raw `If-None-Match` value; several fields are joined with `", "` (it is a list).
    pub if_none_match: Option<String>,
    /// Raw `If-Modified-Since` value.
    pub if_modified_since: Option<String>,
    /// Raw `If-Match` value; several fields are joined with `", "` (it is a list).
    pub if_match: Option<String>,
    /// Raw `If-Unmodified-Since` value.
    pub if_unmodified_since: Option<String>,
    /// Raw `Authorization` value.
    pub authorization: Option<String>,
}

/// The result of looking at the bytes received so far.
// Returned by value once per request and consumed at once: boxing the head would cost an
// allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet; read more and call again with the whole buffer.
    Partial,
    /// A valid head, and how many bytes of the buffer it used (the next request starts there).
    Complete {
        /// The request.
        head: RequestHead,
        /// Bytes of the buffer the head occupied, final blank line included.
        consumed: usize,
    },
}

/// Errors carry the status to answer with; after any of them the connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 400: malformed head or a request-smuggling shape; the text says which (for logs).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 414: the request target is longer than [`Limits::max_target_len`].
    #[error("request target too long")]
    UriTooLong,
    /// 431: the head is larger than [`Limits::max_head_bytes`] or has too many fields.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// 405: a method other than GET or HEAD; answer with `Allow: GET, HEAD`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 505: an HTTP version other than 1.0 and 1.1 (HTTP/2 prior knowledge included).
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl RequestError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge => 431,
            RequestError::MethodNotAllowed => 405,
            RequestError::VersionNotSupported => 505,
        }
    }

    /// Extra header fields the error response must carry (`Allow` for 405).
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            RequestError::MethodNotAllowed => &[("Allow", "GET, HEAD")],
            _ => &[],
        }
    }
}

/// Parses the request head at the start of `buf`.
///
/// Returns [`Parsed::Partial`] only while `buf.len() < limits.max_head_bytes`; bytes after
/// the head (a pipelined request) are left alone and `consumed` says where they start.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, RequestError> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    let consumed = match req.parse_with_uninit_headers(window, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if target_too_long(window, limits.max_target_len) {
                return Err(RequestError::UriTooLong);
            }
            if window.len() >= limits.max_head_bytes {
                return Err(RequestError::HeadersTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        Err(e) => {
            if target_too_long(window, limits.max_target_len) {
                return Err(RequestError::UriTooLong);
            }
            return Err(match e {
                httparse::Error::TooManyHeaders => RequestError::HeadersTooLarge,
                httparse::Error::Version if names_a_version(window) => {
                    RequestError::VersionNotSupported
                }
                httparse::Error::HeaderName => RequestError::BadRequest("invalid header name"),
                httparse::Error::HeaderValue => RequestError::BadRequest("invalid header value"),
                httparse::Error::NewLine => RequestError::BadRequest("invalid line ending"),
                _ => RequestError::BadRequest("invalid request line"),
            });
        }
    };
    let (Some(method), Some(raw_target), Some(version)) = (req.method, req.path, req.version)
    else {
        return Err(RequestError::BadRequest("incomplete request line"));
    };
    if raw_target.len() > limits.max_target_len {
        return Err(RequestError::UriTooLong);
    }
    let http10 = version == 0;

    let mut fields = Fields::default();
    for h in req.headers.iter() {
        fields.take(h.name, h.value)?;
    }
    if fields.transfer_encoding {
        return Err(RequestError::BadRequest(
            "Transfer-Encoding is not accepted",
        ));
    }
    if !http10 && !fields.host {
        return Err(RequestError::BadRequest("missing Host"));
    }
    // Any other method is 405 whatever its target's form (`OPTIONS *`, `CONNECT host:port`):
    // the form is only checked for the methods weir serves.
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(RequestError::MethodNotAllowed),
    };
    let (path, query) = split_target(raw_target)?;
    if fields.content_length.is_some_and(|n| n != 0) {
        return Err(RequestError::BadRequest("request body on GET/HEAD"));
    }
    let keep_alive = if http10 {
        fields.conn_keep_alive && !fields.conn_close
    } else {
        !fields.conn_close
    };
    Ok(Parsed::Complete {
        head: RequestHead {
            method,
            target: path.to_owned(),
            query: query.map(str::to_owned),
            http10,
            keep_alive,
            range: fields.range.map(str::to_owned),
            if_range: fields.if_range.map(str::to_owned),
            if_none_match: fields.if_none_match.map(|l| l.join()),
            if_modified_since: fields.if_modified_since.map(str::to_owned),
            if_match: fields.if_match.map(|l| l.join()),
            if_unmodified_since: fields.if_unmodified_since.map(str::to_owned),
            authorization: fields.authorization.map(str::to_owned),
        },
        consumed,
    })
}

/// Whether the request line visible in `buf` already has a target longer than `max`, even if
/// the line (or the target itself) is still incomplete.
fn target_too_long(buf: &[u8], max: usize) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let Some(sp) = line.iter().take(32).position(|&b| b == b' ') else {
        return false;
    };
    let target = &line[sp + 1..];
    let scan = &target[..target.len().min(max + 1)];
    let len = scan
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(scan.len());
    len > max
}

/// Whether the third word of the request line looks like `HTTP/<digit>`: a well-formed line
/// with a version weir does not speak (505), rather than a malformed line (400).
fn names_a_version(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = buf[start..]
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let version = words.nth(2).unwrap_or_default();
    words.next().is_none()
        && version.len() > 5
        && version[..5].eq_ignore_ascii_case(b"HTTP/")
        && version[5].is_ascii_digit()
}

/// Splits a request target into its path (origin-form; absolute-form reduced to its path) and
/// its query.
fn split_target(raw: &str) -> Result<(&str, Option<&str>), RequestError> {
    let path_and_query = if raw.starts_with('/') {
        raw
    } else if let Some(rest) = strip_scheme(raw) {
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' && i > 0 => &rest[i..],
            _ => {
                return Err(RequestError::BadRequest(
                    "absolute-form target without path",
                ))
            }
        }
    } else {
        return Err(RequestError::BadRequest("target is not origin-form"));
    };
    Ok(match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    })
}

/// The rest of an absolute-form target after `http://` or `https://` (any case).
///
/// Compares bytes: the target may hold non-ASCII characters, and slicing the `str` at the
/// scheme's length could fall inside one (a panic found by fuzzing). When the ASCII prefix
/// matches, its length is a character boundary.
fn strip_scheme(raw: &str) -> Option<&str> {
    for scheme in ["http://", "https://"] {
        if raw
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
        {
            return Some(&raw[scheme.len()..]);
        }
    }
    None
}

/// The header fields weir acts on, borrowed from the read buffer while validating.
#[derive(Default)]
struct Fields<'b> {
    host: bool,
    transfer_encoding: bool,
    content_length: Option<u64>,
    conn_close: bool,
    conn_keep_alive: bool,
    range: Option<&'b str>,
    if_range: Option<&'b str>,
    if_none_match: Option<List<'b>>,
    if_modified_since: Option<&'b str>,
    if_match: Option<List<'b>>,
    if_unmodified_since: Option<&'b str>,
    authorization: Option<&'b str>,
}

/// One or more field lines of a list-valued field; joined only when there are several.
enum List<'b> {
    One(&'b str),
    Many(String),
}

impl List<'_> {
    fn join(self) -> String {
        match self {
            List::One(s) => s.to_owned(),
            List::Many(s) => s,
        }
    }
}

impl<'b> Fields<'b> {
    fn take(&mut self, name: &str, value: &'b [u8]) -> Result<(), RequestError> {
        // Dispatch on length first: most fields are rejected by one integer compare.
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is("host") => {
                if self.host {
                    return Err(RequestError::BadRequest("duplicate Host"));
                }
                if !valid_host(trim(value)) {
                    return Err(RequestError::BadRequest("invalid Host"));
                }
                self.host = true;
            }
            5 if is("range") => single(&mut self.range, value, "duplicate Range")?,
            8 if is("if-range") => single(&mut self.if_range, value, "duplicate If-Range")?,
            10 if is("connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    }
                }
            }
            13 if is("authorization") => {
                single(&mut self.authorization, value, "duplicate Authorization")?
            }
            13 if is("if-none-match") => append(&mut self.if_none_match, text(value)?),
            8 if is("if-match") => append(&mut self.if_match, text(value)?),
            19 if is("if-unmodified-since") => single(
                &mut self.if_unmodified_since,
                value,
                "duplicate If-Unmodified-Since",
            )?,
            14 if is("content-length") => {
                if self.content_length.is_some() {
                    return Err(RequestError::BadRequest("duplicate Content-Length"));
                }
                self.content_length = Some(decimal(trim(value))?);
            }
            17 if is("transfer-encoding") => self.transfer_encoding = true,
            17 if is("if-modified-since") => single(
                &mut self.if_modified_since,
                value,
                "duplicate If-Modified-Since",
            )?,
            _ => {}
        }
        Ok(())
    }
}

/// Adds one field line of a list-valued field.
fn append<'b>(slot: &mut Option<List<'b>>, v: &'b str) {
    *slot = Some(match slot.take() {
        None => List::One(v),
        Some(prev) => {
            let mut s = prev.join();
            s.push_str(", ");
            s.push_str(v);
            List::Many(s)
        }
    });
}

/// A `Host` value (RFC 9112 §3.2): `uri-host [ ":" port ]`, where `uri-host` is an RFC 3986
/// IP-literal, IPv4 address or reg-name (unreserved, pct-encoded, sub-delims) and `port` is
/// digits. No userinfo (`@`), no whitespace. An empty value is allowed (an empty authority).
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        // IP-literal: IPv6address or IPvFuture, checked for its character set.
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &rest[..close];
        let ip_char = |b: u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
        let future = |b: u8| is_unreserved(b) || is_sub_delim(b) || b == b':';
        let ok = match inner {
            [b'v' | b'V', ..] => inner.len() > 3 && inner.iter().all(|&b| future(b)),
            _ => !inner.is_empty() && inner.iter().all(|&b| ip_char(b)),
        };
        if !ok {
            return false;
        }
        match &rest[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], port),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &[][..]),
        }
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if is_unreserved(b) || is_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `sub-delims`.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn single<'b>(
    slot: &mut Option<&'b str>,
    value: &'b [u8],
    dup: &'static str,
) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(RequestError::BadRequest(dup));
    }
    *slot = Some(text(value)?);
    Ok(())
}

fn text(value: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(trim(value)).map_err(|_| RequestError::BadRequest("header value not UTF-8"))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A Content-Length value: one or more ASCII digits, nothing else, fitting in a u64.
fn decimal(v: &[u8]) -> Result<u64, RequestError> {
    const BAD: RequestError = RequestError::BadRequest("invalid Content-Length");
    if v.is_empty() {
        return Err(BAD);
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(BAD);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(BAD)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Parsed, RequestError> {
        parse_request(s.as_bytes(), &Limits::default())
    }

    fn head(s: &str) -> RequestHead {
        match parse(s) {
            Ok(Parsed::Complete { head, consumed }) => {
                assert_eq!(consumed, s.len());
                head
            }
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn bad(s: &str) {
        assert!(
            matches!(parse(s), Err(RequestError::BadRequest(_))),
            "{s:?}: {:?}",
            parse(s)
        );
    }

    #[test]
    fn simple_get() {
        let h = head("GET /d/abc?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1 \r\n\r\n");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target, "/d/abc");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert!(!h.http10 && h.keep_alive);
        assert_eq!(h.range.as_deref(), Some("bytes=0-1"));
        assert_eq!(h.if_range, None);
    }

    #[test]
    fn fields_are_copied() {
        let h = head(
            "HEAD / HTTP/1.1\r\nhOsT: a\r\nIf-Range: \"e\"\r\nIf-None-Match: \"a\"\r\n\
             if-none-match: W/\"b\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Authorization: Basic eDp5\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(h.method, Method::Head);
        assert_eq!(h.if_range.as_deref(), Some("\"e\""));
        assert_eq!(h.if_none_match.as_deref(), Some("\"a\", W/\"b\""));
        assert_eq!(
            h.if_modified_since.as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(h.authorization.as_deref(), Some("Basic eDp5"));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").keep_alive
        );
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert!(h.http10 && !h.keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n").keep_alive);
    }

    #[test]
    fn absolute_form_keeps_path() {
        let h = head("GET http://example.com/d/x?q HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(h.target, "/d/x");
        assert_eq!(h.query.as_deref(), Some("q"));
        bad("GET http://example.com HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn non_ascii_target_is_400_not_a_panic() {
        // Found by fuzz/fuzz_targets/request_head.rs: the scheme check sliced the target at
        // byte 7, inside the two-byte character, and panicked the worker thread.
        bad("GET http:/\u{6c7}/a HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET htt\u{e9}/a HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET https:/\u{e9}/a HTTP/1.1\r\nHost: a\r\n\r\n");
        let h = head("GET HTTP://h\u{e9}/d/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target, "/d/x");
    }

    #[test]
    fn partial_and_pipelined() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(Parsed::Partial));
        assert_eq!(parse("GE"), Ok(Parsed::Partial));
        assert_eq!(parse(""), Ok(Parsed::Partial));
        let two = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n";
        match parse(two) {
            Ok(Parsed::Complete { head, consumed }) => {
                assert_eq!(head.target, "/a");
                assert_eq!(consumed, two.find("GET /b").unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn smuggling_shapes_are_400() {
        bad("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
        bad("HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
        // obs-fold and whitespace before the colon (refused by httparse in requests).
        bad("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n");
        bad("GET / HTTP/1.1\r\n Host: a\r\n\r\n");
        // Host: missing on 1.1, or repeated.
        bad("GET / HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        // Singletons repeated.
        bad("GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n");
        // Garbage.
        bad("GET / HTTP/1.1\r\nHost: a\r\nBad\0Name: x\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n");
        bad("GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("\x01ET / HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-\x7f\r\n\r\n");
        let non_utf8 = b"GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=\xff\r\n\r\n";
        assert_eq!(
            parse_request(non_utf8, &Limits::default()),
            Err(RequestError::BadRequest("header value not UTF-8"))
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
    }

    #[test]
    fn host_is_an_authority_without_userinfo() {
        for ok in [
            "a",
            "example.com:8080",
            "127.0.0.1",
            "[::1]:80",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "x%41y",
            "a:",
            "",
        ] {
            let fixed = ok.replace("%25eth0", "");
            head(&format!("GET / HTTP/1.1\r\nHost: {fixed}\r\n\r\n"));
        }
        for bad_host in [
            "a b", "a@b", "u:p@h", "a/b", "a?b", "a#b", "[::1", "[::1]x", "[]", "a:8x", "%zz",
            "a\"b", "a<b",
        ] {
            bad(&format!("GET / HTTP/1.1\r\nHost: {bad_host}\r\n\r\n"));
        }
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"),
            Err(RequestError::BadRequest("invalid Host"))
        );
    }

    #[test]
    fn if_match_fields_are_copied() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: a\r\nIf-Match: \"a\"\r\nIf-Match: \"b\"\r\n\
             If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        );
        assert_eq!(h.if_match.as_deref(), Some("\"a\", \"b\""));
        assert_eq!(
            h.if_unmodified_since.as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        bad(
            "GET / HTTP/1.1\r\nHost: a\r\nIf-Unmodified-Since: x\r\nIf-Unmodified-Since: y\r\n\r\n",
        );
    }

    #[test]
    fn zero_content_length_is_fine() {
        head("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        head("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n");
    }

    #[test]
    fn other_methods_are_405_after_validation() {
        let e = parse("POST /d/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n").unwrap_err();
        assert_eq!(e, RequestError::MethodNotAllowed);
        assert_eq!(e.status(), 405);
        assert_eq!(e.extra_headers(), &[("Allow", "GET, HEAD")]);
        assert_eq!(
            parse("DELETE / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(RequestError::MethodNotAllowed)
        );
        assert_eq!(
            parse("get / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(RequestError::MethodNotAllowed)
        );
        // Still a partial head: wait for the rest before answering.
        assert_eq!(parse("POST / HTTP/1.1\r\nHost: a\r\n"), Ok(Parsed::Partial));
        // Smuggling shapes are 400 whatever the method.
        bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Asterisk-form and authority-form targets belong to OPTIONS and CONNECT: still 405.
        for s in [
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ] {
            assert_eq!(parse(s), Err(RequestError::MethodNotAllowed), "{s:?}");
        }
        // ...but not for GET.
        bad("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn versions_are_505() {
        for s in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "GET / HTTP/0.9\r\n\r\n",
        ] {
            let e = parse(s).unwrap_err();
            assert_eq!(e, RequestError::VersionNotSupported, "{s:?}");
            assert_eq!(e.status(), 505);
        }
        // HTTP/0.9 simple request (no version), or no version at all, is malformed.
        bad("GET /\r\n\r\n");
        bad("GET / FTP/1.1\r\n\r\n");
        bad("GET / HTTP/x\r\n\r\n");
        bad("GET / HTTP/1.10\r\n\r\n");
    }

    #[test]
    fn long_target_is_414_even_when_partial() {
        let l = Limits::default();
        let long = "a".repeat(l.max_target_len);
        let e = parse(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")).unwrap_err();
        assert_eq!((e, e.status()), (RequestError::UriTooLong, 414));
        // Only the start of the target has arrived.
        assert_eq!(
            parse(&format!("GET /{long}")),
            Err(RequestError::UriTooLong)
        );
        assert_eq!(parse(&format!("GET /{}", &long[1..])), Ok(Parsed::Partial));
        // Exactly at the limit is fine.
        let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", &long[1..]);
        assert_eq!(head(&ok).target.len(), l.max_target_len);
        // The query counts.
        let q = format!("GET /?{} HTTP/1.1\r\nHost: a\r\n\r\n", &long[1..]);
        assert_eq!(parse(&q), Err(RequestError::UriTooLong));
    }

    #[test]
    fn oversized_head_is_431() {
        let l = Limits::default();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(l.max_head_bytes)
        );
        let e = parse(&big).unwrap_err();
        assert_eq!((e, e.status()), (RequestError::HeadersTooLarge, 431));
        // Partial up to the limit, then 431 at it.
        assert_eq!(parse(&big[..l.max_head_bytes - 1]), Ok(Parsed::Partial));
        assert_eq!(
            parse(&big[..l.max_head_bytes]),
            Err(RequestError::HeadersTooLarge)
        );
        // A head that ends exactly at the limit is accepted.
        let fixed = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(l.max_head_bytes - fixed)
        );
        assert_eq!(exact.len(), l.max_head_bytes);
        head(&exact);
    }

    #[test]
    fn too_many_headers_is_431() {
        let l = Limits::default();
        let mut s = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..l.max_headers {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        head(&(s.clone() + "\r\n"));
        s.push_str("X-last: v\r\n");
        assert_eq!(
            parse(&(s.clone() + "\r\n")),
            Err(RequestError::HeadersTooLarge)
        );
        // Detected before the head is complete.
        assert_eq!(parse(&s), Err(RequestError::HeadersTooLarge));
        // A configured limit above the cap is clamped, not overrun.
        let lim = Limits {
            max_headers: 10_000,
            ..Limits::default()
        };
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS_CAP {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            parse_request(many.as_bytes(), &lim),
            Err(RequestError::HeadersTooLarge)
        );
    }
}
