//! weir-load: parse the command line and hand it to [`weir_load::run`].
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = weir_load::cli::Cli::parse();
    match weir_load::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
