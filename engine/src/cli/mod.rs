//! The `weir` command line: [`args`] parses (clap), [`run`] (in `commands`) executes parsed
//! arguments against any writer, so tests drive the CLI in-process. Thin on purpose: the work is
//! in [`crate::storage`], [`crate::catalog`], [`crate::token`], [`crate::demo`] and
//! [`crate::server`]; [`check_system`] judges the host for `weir check-system`.

pub mod args;
pub mod check_system;
mod commands;

use std::io;

use clap::Parser;

pub use args::Cli;
pub use commands::run;

/// Entry point of the `weir` binary: parse, set up logging, run, and exit 1 on error.
pub fn main() {
    let cli = Cli::parse();
    init_tracing();
    if let Err(e) = run(cli, &mut io::stdout()) {
        eprintln!("weir: error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `WEIR_LOG` (tracing-subscriber's EnvFilter syntax; default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}
