//! HTTP/1.1 for weir: pure functions the connection state machine calls. No I/O here.
//!
//! What each submodule owns:
//! - [`request`]: parse and validate a request head ([`parse_request`]); size limits,
//!   request-smuggling shapes, keep-alive.
//! - [`conditional`]: `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//!   `If-Modified-Since`, `If-Range` ([`evaluate_preconditions`]).
//! - [`multipart`]: `multipart/byteranges` layouts with an exact length ([`Multipart`]).
//! - [`range`]: `Range` headers resolved against a length ([`resolve_ranges`]).
//! - [`response`]: response heads into a reused buffer ([`write_head`]), reason phrases, error
//!   bodies, the cached `Date` ([`DateCache`]).
//! - [`mod@route`]: which catalog object a path names ([`route()`]); ids are keys, never paths.
//!
//! Nothing here allocates per header; the only allocations are the few owned strings of a
//! [`RequestHead`] (and the part list of a multi-range response).
//!
//! One request, start to finish, as the connection state machine drives it:
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use weir::http::*;
//!
//! let buf = b"GET /d/album7/2 HTTP/1.1\r\nHost: x\r\nRange: bytes=-100\r\n\r\n";
//! let Ok(Parsed::Complete { head, consumed }) = parse_request(buf, &Limits::default()) else {
//!     unreachable!("Partial: read more; Err(e): answer e.status() and close")
//! };
//! assert_eq!(consumed, buf.len());
//! assert_eq!(route(&head.target), Route::Track { album: "album7", n: 2 });
//!
//! // The store resolves the track to a file of 1000 bytes with these validators.
//! let v = Validators { etag: "\"3f2a\"", last_modified: UNIX_EPOCH + Duration::from_secs(1) };
//! let Precondition::Proceed { honor_range } = evaluate_preconditions(&head, &v) else {
//!     unreachable!("304")
//! };
//! let range = head.range.as_deref().filter(|_| honor_range);
//! let outcome = range.map_or(RangeOutcome::Full, |r| resolve_ranges(r, 1000));
//! let RangeOutcome::Partial(Ranges::One(r)) = outcome else { unreachable!() };
//! assert_eq!(r, 900..1000);
//!
//! let mut out = Vec::new();
//! let mut dates = DateCache::new();
//! let h = ResponseHead {
//!     etag: Some(v.etag),
//!     last_modified: Some(v.last_modified),
//!     content_range: Some(ContentRange::of(&r, 1000)),
//!     ..ResponseHead::new(206, r.end - r.start, "audio/flac", head.keep_alive)
//! };
//! write_head(&mut out, &h, dates.now());
//! assert!(out.starts_with(b"HTTP/1.1 206 Partial Content\r\n"));
//! // ...then the connection sends bytes 900..1000 of the file.
//! ```

pub mod conditional;
pub mod multipart;
pub mod range;
pub mod request;
pub mod response;
pub mod route;

pub use conditional::{evaluate_preconditions, Precondition, Validators};
pub use multipart::{boundary_for, coalesce, Multipart, Piece};
pub use range::{resolve_ranges, RangeOutcome, Ranges};
pub use request::{parse_request, Limits, Method, Parsed, RequestError, RequestHead};
pub use response::{
    error_body, reason, write_error, write_head, ContentRange, DateCache, ResponseHead,
};
pub use route::{route, zip_album, Route};
