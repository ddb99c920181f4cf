//! HTTP/1.1 for weir: pure functions the connection state machine calls. No I/O here.
//!
//! What each submodule owns:
//! - [`request`]: parse and validate a request head ([`parse_request`]); size limits,
//!   request-smuggling shapes, keep-alive.
//! - [`conditional`]: `If-None-Match`, `If-Modified-Since`, `If-Range`
//!   ([`evaluate_preconditions`]).
//! - [`multipart`]: `multipart/byteranges` layouts with an exact length ([`Multipart`]).
//! - [`range`]: `Range` headers resolved against a length ([`resolve_ranges`]).
//! - [`response`]: response heads into a reused buffer ([`write_head`]), reason phrases, error
//!   bodies, the cached `Date` ([`DateCache`]).
//! - [`route`]: which catalog object a path names ([`route()`]); ids are keys, never paths.
//!
//! Nothing here allocates per header; the only allocations are the few owned strings of a
//! [`RequestHead`].

pub mod conditional;
pub mod multipart;
pub mod range;
pub mod request;
pub mod response;
pub mod route;

pub use conditional::{evaluate_preconditions, Precondition, Validators};
pub use multipart::{boundary_for, Multipart, Piece};
pub use range::{resolve_ranges, RangeOutcome, Ranges};
pub use request::{parse_request, Limits, Method, Parsed, RequestError, RequestHead};
pub use response::{
    error_body, reason, write_error, write_head, ContentRange, DateCache, ResponseHead,
};
pub use route::{route, zip_album, Route};
