//! The `weir` command line (placeholder).
pub fn main() {}
