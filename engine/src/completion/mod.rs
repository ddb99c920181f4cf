//! Completion accounting: which bytes reached each client, and when that makes a completion.
//!
//! An item leaves a user's cart only when every byte of it was acknowledged by the client's TCP.
//! The first four pieces are pure (no storage, no clock, no socket I/O outside [`tcp_info`]);
//! the last two own the durable side, on their own threads:
//!
//! - [`delivery`]: per connection, a [`StreamMap`] of which stream offsets carried which content
//!   bytes; fed the kernel's `tcpi_bytes_acked`, it returns the content newly acknowledged.
//!   Response heads, multipart boundaries and zip headers never credit content.
//! - [`zip`]: the deterministic stored zip of an album, laid out up front ([`ZipLayout`]) so any
//!   byte range of it is served from literal bytes and track file segments, and so a delivered
//!   zip range maps onto the track bytes it contains.
//! - [`intervals`]: the merged set of delivered byte intervals kept per (user, item or track)
//!   ([`IntervalSet`]); the item completes when it covers `0..len`. It lives at the crate root
//!   ([`crate::intervals`]) because storage journals it too; it is re-exported here.
//! - [`tcp_info`]: the one impure helper, [`tcp_delivery`], which reads `tcpi_bytes_acked` and
//!   the send queue of a socket (one `getsockopt`, one `ioctl`: the module's only `unsafe`).
//! - [`ledger`]: the [`Ledger`] thread I/O workers hand [`Credit`]s to; it keeps progress per
//!   purchase, journals it through [`crate::storage::Storage`], and records each completion with
//!   one [`commit_completion`](crate::storage::Storage::commit_completion).
//! - [`webhook`]: the thread that POSTs the storage's outbox of completion events.
//! - [`inflight`]: each live response run's credited and written offsets in a shared file
//!   mapping per worker, so SIGKILL loses no credit; replayed by the ledger on start.
//! - [`orphans`]: after a crash, how far clients acknowledged the dead process's sockets, which
//!   the kernel went on sending (netlink `sock_diag`, by socket cookie).
//! - [`stats`]: the counters both threads keep ([`LedgerStats`]).
//!
//! Imports go one way: `ledger` → `webhook` → `stats`, all of them → [`crate::storage`] and
//! [`crate::intervals`]; storage never imports this module.
//!
//! ```
//! use weir::completion::{IntervalSet, StreamMap};
//!
//! let mut stream = StreamMap::new();
//! stream.push_overhead(120); // response head
//! stream.push_content(7, 0, 1000); // body: bytes 0..1000 of target 7
//! let mut delivered = IntervalSet::new();
//! for (target, range) in stream.acknowledge(620) {
//!     assert_eq!((target, range.clone()), (7, 0..500));
//!     delivered.insert(range);
//! }
//! assert!(!delivered.is_complete(1000));
//! ```

pub mod delivery;
pub mod inflight;
pub mod ledger;
pub mod orphans;
pub mod stats;
pub mod tcp_info;
pub mod webhook;
pub mod zip;

pub use crate::intervals::{self, IntervalSet};
pub use delivery::StreamMap;
pub use inflight::InflightFile;
pub use ledger::{Credit, Ledger, LedgerConfig, LedgerThread};
pub use stats::LedgerStats;
pub use tcp_info::{tcp_acked, tcp_delivery, tcp_rtt, unsent_bytes, AckState, TcpDelivery};
pub use zip::{ZipEntry, ZipLayout, ZipPiece, ZipSlice};
