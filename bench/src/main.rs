//! `weir-bench`: parses the command line and hands it to [`weir_bench::run`].
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = weir_bench::cli::Cli::parse();
    match weir_bench::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
