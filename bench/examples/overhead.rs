//! Temporary runner for `overhead::run` until weir-bench's main wires it in.
#[path = "../src/overhead.rs"]
mod overhead;

use clap::Parser as _;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: overhead::Args,
}

fn main() -> anyhow::Result<()> {
    overhead::run(Cli::parse().args)
}
