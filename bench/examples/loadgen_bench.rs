//! Temporary runner for `loadgen_bench::run` until weir-bench's main wires it in.
#[path = "../src/loadgen_bench.rs"]
mod loadgen_bench;
#[path = "../src/overhead.rs"]
#[allow(dead_code)] // only its procs helpers are used here
mod overhead;

use clap::Parser as _;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: loadgen_bench::Args,
}

fn main() -> anyhow::Result<()> {
    loadgen_bench::run(Cli::parse().args)
}
