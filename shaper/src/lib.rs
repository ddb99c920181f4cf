//! Hierarchical bandwidth shaper for weir: root (global rate) -> user classes -> connections.
//!
//! This crate does no I/O. (Skeleton: the full shaper lands with the shaper issue.)

mod rate;

pub use rate::{ParseRateError, Rate};
