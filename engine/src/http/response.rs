//! Response heads: written straight into the connection's reused output buffer.
//!
//! [`write_head`] appends a complete head to a `Vec<u8>`: no `format!`, no allocation once the
//! buffer has grown to its working size. Integers and HTTP-dates are formatted by hand into
//! stack buffers ([`fmt_http_date`] is tested to agree with `httpdate`). The `Date` value comes
//! from a [`DateCache`] the worker refreshes at most once a second.
//!
//! Every head carries `Date`, `Server: weir`, `Content-Length` and `Connection`; catalog
//! responses (200/206/304/416) also `Accept-Ranges: bytes`. The values catalog responses name
//! their content with are built here once per resource: [`content_disposition`] (the file name
//! a client saves) and [`media_type`] (`Content-Type` from the name's extension). Values passed in (content type,
//! ETag, extra fields) come from the server itself, never from a request, so they are only
//! checked for CR/LF in debug builds.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `Content-Range` of a 206 or 416.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes start-end_inclusive/len`.
    Bytes {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end_inclusive: u64,
        /// Representation length.
        len: u64,
    },
    /// `bytes */len` (416).
    Unsatisfiable {
        /// Representation length.
        len: u64,
    },
}

impl ContentRange {
    /// The `Content-Range` of a non-empty, end-exclusive range of a representation of `len`.
    pub fn of(range: &Range<u64>, len: u64) -> ContentRange {
        debug_assert!(range.start < range.end && range.end <= len);
        ContentRange::Bytes {
            start: range.start,
            end_inclusive: range.end - 1,
            len,
        }
    }

    /// Appends the field value (`bytes a-b/len` or `bytes */len`).
    pub fn write_value(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"bytes ");
        match *self {
            ContentRange::Bytes {
                start,
                end_inclusive,
                len,
            } => {
                push_u64(out, start);
                out.push(b'-');
                push_u64(out, end_inclusive);
                out.push(b'/');
                push_u64(out, len);
            }
            ContentRange::Unsatisfiable { len } => {
                out.extend_from_slice(b"*/");
                push_u64(out, len);
            }
        }
    }
}

/// Response head writer input: appends to a reused `Vec<u8>`; no per-header allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    /// Status code; the reason phrase comes from [`reason`].
    pub status: u16,
    /// The `Content-Length`: body bytes of a GET (for HEAD, what a GET would send; for 304, the
    /// length a 200 would have — RFC 9110 §8.6 allows no other value).
    pub content_length: u64,
    /// `Content-Type`; omitted when empty and on 304.
    pub content_type: &'a str,
    /// `Connection: keep-alive` or `Connection: close`.
    pub keep_alive: bool,
    /// `ETag`, quotes included.
    pub etag: Option<&'a str>,
    /// `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// `Content-Range`.
    pub content_range: Option<ContentRange>,
    /// `Accept-Ranges: bytes` (catalog resources: 200/206/304/416).
    pub accept_ranges: bool,
    /// More fields, e.g. `WWW-Authenticate`, `Allow`, `Retry-After`.
    pub extra: &'a [(&'a str, &'a str)],
}

impl<'a> ResponseHead<'a> {
    /// A head with no optional fields; `accept_ranges` is set for 200, 206, 304 and 416.
    pub fn new(status: u16, content_length: u64, content_type: &'a str, keep_alive: bool) -> Self {
        ResponseHead {
            status,
            content_length,
            content_type,
            keep_alive,
            etag: None,
            last_modified: None,
            content_range: None,
            accept_ranges: matches!(status, 200 | 206 | 304 | 416),
            extra: &[],
        }
    }
}

/// Appends the response head `h`, final blank line included, to `out`. `date` is the cached
/// IMF-fixdate from [`DateCache::now`].
pub fn write_head(out: &mut Vec<u8>, h: &ResponseHead, date: &[u8]) {
    out.reserve(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(h.status));
    out.push(b' ');
    out.extend_from_slice(reason(h.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nServer: weir\r\n");
    if !h.content_type.is_empty() && h.status != 304 {
        field(out, "Content-Type", h.content_type);
    }
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, h.content_length);
    out.extend_from_slice(b"\r\n");
    if let Some(cr) = &h.content_range {
        out.extend_from_slice(b"Content-Range: ");
        cr.write_value(out);
        out.extend_from_slice(b"\r\n");
    }
    if h.accept_ranges {
        out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    }
    if let Some(etag) = h.etag {
        field(out, "ETag", etag);
    }
    if let Some(lm) = h.last_modified {
        out.extend_from_slice(b"Last-Modified: ");
        out.extend_from_slice(&fmt_http_date(lm));
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in h.extra {
        field(out, name, value);
    }
    out.extend_from_slice(if h.keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

/// Appends a whole error response (head and the [`error_body`] text) to `out`.
pub fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    keep_alive: bool,
    extra: &[(&str, &str)],
    date: &[u8],
) {
    let body = error_body(status);
    let mut h = ResponseHead::new(
        status,
        body.len() as u64,
        "text/plain; charset=utf-8",
        keep_alive,
    );
    h.accept_ranges = false;
    h.extra = extra;
    write_head(out, &h, date);
    out.extend_from_slice(body);
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(!name.contains(['\r', '\n', ':']) && !value.contains(['\r', '\n']));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal form of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

macro_rules! statuses {
    ($($code:literal => $text:literal,)*) => {
        /// The reason phrase of a status code weir sends (empty for others, which HTTP allows).
        pub fn reason(status: u16) -> &'static str {
            match status {
                $($code => $text,)*
                _ => "",
            }
        }

        /// A short text body for an error status, e.g. `b"401 Unauthorized\n"`.
        pub fn error_body(status: u16) -> &'static [u8] {
            match status {
                $($code => concat!($code, " ", $text, "\n").as_bytes(),)*
                _ => b"error\n",
            }
        }
    };
}

statuses! {
    200 => "OK",
    206 => "Partial Content",
    304 => "Not Modified",
    400 => "Bad Request",
    401 => "Unauthorized",
    403 => "Forbidden",
    404 => "Not Found",
    405 => "Method Not Allowed",
    408 => "Request Timeout",
    412 => "Precondition Failed",
    414 => "URI Too Long",
    416 => "Range Not Satisfiable",
    429 => "Too Many Requests",
    431 => "Request Header Fields Too Large",
    500 => "Internal Server Error",
    501 => "Not Implemented",
    503 => "Service Unavailable",
    505 => "HTTP Version Not Supported",
}

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const HTTP_DATE_LEN: usize = 29;

/// Formats `t` as an IMF-fixdate (RFC 9110 §5.6.7), without allocating. Times before 1970
/// format as the epoch, times after 9999 as its last second.
pub fn fmt_http_date(t: SystemTime) -> [u8; HTTP_DATE_LEN] {
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_SECS);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WDAY: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MON: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let two = |n: u64| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let mut b = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    b[..3].copy_from_slice(WDAY[(days % 7) as usize]);
    b[5..7].copy_from_slice(&two(day));
    b[8..11].copy_from_slice(MON[(month - 1) as usize]);
    b[12..14].copy_from_slice(&two(year / 100));
    b[14..16].copy_from_slice(&two(year % 100));
    b[17..19].copy_from_slice(&two(rem / 3600));
    b[20..22].copy_from_slice(&two(rem / 60 % 60));
    b[23..25].copy_from_slice(&two(rem % 60));
    b
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The `Date` header value, reformatted at most once per second.
#[derive(Clone, Debug)]
pub struct DateCache {
    secs: u64,
    text: [u8; HTTP_DATE_LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DateCache {
    /// A cache holding the current time.
    pub fn new() -> DateCache {
        let mut c = DateCache {
            secs: u64::MAX,
            text: [0; HTTP_DATE_LEN],
        };
        c.now();
        c
    }

    /// The current time as an IMF-fixdate (reads the clock; formats only when the second
    /// changed).
    pub fn now(&mut self) -> &[u8] {
        self.at(SystemTime::now())
    }

    /// The given time as an IMF-fixdate, reusing the cached text within the same second (for
    /// callers that already read the clock, and for tests).
    pub fn at(&mut self, t: SystemTime) -> &[u8] {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = fmt_http_date(t);
        }
        &self.text
    }
}

/// The `Content-Disposition` value that makes a client save the body as `name` (RFC 6266):
/// `attachment; filename="FALLBACK"; filename*=UTF-8''ENCODED`.
///
/// `filename*` (RFC 8187) carries the exact name in UTF-8, percent-encoded outside RFC 8187's
/// `attr-char` set; clients that read it (browsers, wget) use it. `filename` is the fallback for
/// those that do not (curl `-J`): printable ASCII only, with every other character, `"` and
/// `\` replaced by `_` (curl ends a quoted name at the first `"`, escaped or not, and strips
/// everything up to a `\`), and a leading `.` too, so no fallback is a hidden file.
pub fn content_disposition(name: &str) -> String {
    let mut out = String::with_capacity(40 + name.len() * 4);
    out.push_str("attachment; filename=\"");
    for (i, c) in name.chars().enumerate() {
        let keep = c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ';
        out.push(if keep && !(i == 0 && c == '.') {
            c
        } else {
            '_'
        });
    }
    out.push_str("\"; filename*=UTF-8''");
    for b in name.bytes() {
        let attr_char = b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
        if attr_char {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// The `Content-Type` of a file named `name`, from its extension (case-insensitive): common
/// audio, video, image and archive formats, PDF and EPUB; `application/octet-stream` for
/// anything else, so nothing is guessed as text a browser would render.
pub fn media_type(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        // Audio
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "wav" => "audio/wav",
        "m4a" | "m4b" => "audio/mp4",
        "aac" => "audio/aac",
        "aif" | "aiff" => "audio/aiff",
        "mid" | "midi" => "audio/midi",
        "weba" => "audio/webm",
        "wma" => "audio/x-ms-wma",
        // Video
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        "ogv" => "video/ogg",
        "mpg" | "mpeg" => "video/mpeg",
        "wmv" => "video/x-ms-wmv",
        "3gp" => "video/3gpp",
        // Images
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "ico" => "image/vnd.microsoft.icon",
        "heic" => "image/heic",
        // Archives
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "bz2" => "application/x-bzip2",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "7z" => "application/x-7z-compressed",
        "rar" => "application/vnd.rar",
        // Documents
        "pdf" => "application/pdf",
        "epub" => "application/epub+zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn head(h: &ResponseHead) -> String {
        let mut out = b"previous".to_vec();
        write_head(&mut out, h, DATE);
        String::from_utf8(out.split_off(8)).unwrap()
    }

    #[test]
    fn partial_content_head() {
        let h = ResponseHead {
            etag: Some("\"abc\""),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            content_range: Some(ContentRange::of(&(0..500), 10_000)),
            ..ResponseHead::new(206, 500, "audio/flac", true)
        };
        assert_eq!(
            head(&h),
            "HTTP/1.1 206 Partial Content\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Server: weir\r\n\
             Content-Type: audio/flac\r\n\
             Content-Length: 500\r\n\
             Content-Range: bytes 0-499/10000\r\n\
             Accept-Ranges: bytes\r\n\
             ETag: \"abc\"\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn unsatisfiable_and_errors() {
        let h = ResponseHead {
            content_range: Some(ContentRange::Unsatisfiable { len: 42 }),
            ..ResponseHead::new(416, 0, "", false)
        };
        assert_eq!(
            head(&h),
            "HTTP/1.1 416 Range Not Satisfiable\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Server: weir\r\nContent-Length: 0\r\nContent-Range: bytes */42\r\n\
             Accept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_error(
            &mut out,
            401,
            true,
            &[("WWW-Authenticate", "Basic realm=\"weir\"")],
            DATE,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Server: weir\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n\
             WWW-Authenticate: Basic realm=\"weir\"\r\nConnection: keep-alive\r\n\r\n\
             401 Unauthorized\n"
        );
    }

    #[test]
    fn not_modified_has_no_content_type() {
        let h = ResponseHead {
            etag: Some("\"e\""),
            ..ResponseHead::new(304, 1234, "video/mp4", true)
        };
        let s = head(&h);
        assert!(s.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(!s.contains("Content-Type"));
        assert!(s.contains("Content-Length: 1234\r\nAccept-Ranges: bytes\r\nETag: \"e\"\r\n"));
    }

    #[test]
    fn full_and_extra() {
        let h = ResponseHead {
            extra: &[("Retry-After", "1"), ("Allow", "GET, HEAD")],
            ..ResponseHead::new(200, u64::MAX, "application/zip", false)
        };
        let s = head(&h);
        assert!(s.contains("Content-Length: 18446744073709551615\r\n"));
        assert!(s.ends_with("Retry-After: 1\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n"));
        assert!(!head(&ResponseHead::new(404, 0, "", true)).contains("Accept-Ranges"));
    }

    #[test]
    fn reasons_and_bodies() {
        for s in [400, 401, 403, 404, 405, 414, 416, 431, 503, 505] {
            assert!(!reason(s).is_empty());
            let body = std::str::from_utf8(error_body(s)).unwrap();
            assert_eq!(body, format!("{s} {}\n", reason(s)));
        }
        assert_eq!(error_body(431), b"431 Request Header Fields Too Large\n");
        assert_eq!(reason(299), "");
        assert_eq!(error_body(299), b"error\n");
        let mut out = Vec::new();
        write_head(&mut out, &ResponseHead::new(299, 0, "", true), DATE);
        assert!(out.starts_with(b"HTTP/1.1 299 \r\n"));
    }

    #[test]
    fn integers() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn dates() {
        let at = |s: u64| fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(&at(784_111_777), DATE);
        assert_eq!(&at(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&at(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            &fmt_http_date(UNIX_EPOCH - Duration::from_secs(5)),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(&at(u64::MAX / 2), b"Fri, 31 Dec 9999 23:59:59 GMT");
        let mut c = DateCache::new();
        assert_eq!(c.now().len(), HTTP_DATE_LEN);
        let t = UNIX_EPOCH + Duration::from_millis(784_111_777_900);
        assert_eq!(c.at(t), DATE);
        assert_eq!(c.at(t + Duration::from_millis(50)), DATE);
        assert_eq!(
            c.at(t + Duration::from_millis(100)),
            b"Sun, 06 Nov 1994 08:49:38 GMT"
        );
    }

    proptest! {
        #[test]
        fn dates_agree_with_httpdate(secs in 0u64..253_402_300_800) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let ours = fmt_http_date(t);
            prop_assert_eq!(std::str::from_utf8(&ours).unwrap(), httpdate::fmt_http_date(t));
        }
    }

    #[test]
    fn content_disposition_has_an_ascii_fallback_and_the_exact_utf8_name() {
        assert_eq!(
            content_disposition("02 Song.flac"),
            "attachment; filename=\"02 Song.flac\"; filename*=UTF-8''02%20Song.flac"
        );
        assert_eq!(
            content_disposition("Björk – Jóga.flac"),
            "attachment; filename=\"Bj_rk _ J_ga.flac\"; \
             filename*=UTF-8''Bj%C3%B6rk%20%E2%80%93%20J%C3%B3ga.flac"
        );
        // Quotes, backslashes, a leading dot, control characters: never in the fallback as
        // they are; always exact in filename*.
        assert_eq!(
            content_disposition(".a\"b\\c\td;e.pdf"),
            "attachment; filename=\"_a_b_c_d;e.pdf\"; filename*=UTF-8''.a%22b%5Cc%09d%3Be.pdf"
        );
        // Whatever the name, the value is one header line of visible ASCII.
        let v = content_disposition("\r\n\u{0}\u{7f}\u{85}x");
        assert!(v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{v}");
    }

    #[test]
    fn media_types_by_extension() {
        assert_eq!(media_type("02 Song.flac"), "audio/flac");
        assert_eq!(media_type("MOVIE.MKV"), "video/x-matroska");
        assert_eq!(media_type("a.b.jpeg"), "image/jpeg");
        assert_eq!(media_type("x.tar.gz"), "application/gzip");
        assert_eq!(media_type("book.pdf"), "application/pdf");
        for other in ["README", ".flac", "page.html", "notes.txt", "x."] {
            assert_eq!(media_type(other), "application/octet-stream", "{other}");
        }
    }
}
