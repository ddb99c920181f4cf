//! Completion accounting, the pure part: no sockets, no storage, no clock.
//!
//! - [`intervals`]: the merged set of delivered byte intervals kept per (user, item or track)
//!   ([`IntervalSet`]); the item completes when it covers `0..len`.

pub mod intervals;

pub use intervals::IntervalSet;
