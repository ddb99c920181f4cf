//! Runner for the shaping-accuracy benchmark (issue 4); the code lives in `src/shaping.rs` so
//! `weir-bench` can take it over later.
//!
//! ```text
//! cargo run --release -p weir-bench --example shaping -- --out results/2026-11-22-shaping/raw
//! ```

#[path = "../src/shaping.rs"]
mod shaping;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    shaping::run(shaping::Args::parse())
}
