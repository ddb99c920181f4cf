//! The `weir` command line: [`args`] parses (clap), [`run`] (in `commands`) executes parsed
//! arguments against any writer, so tests drive the CLI in-process. Thin on purpose: the work is
//! in [`crate::storage`], [`crate::catalog`], [`crate::token`], [`crate::demo`] and
//! [`crate::server`]; [`check_system`] judges the host for `weir check-system`.

pub mod args;
pub mod check_system;
mod commands;

use std::io;

use clap::Parser;

use crate::config::{self, LogFormat};

pub use args::Cli;
pub use commands::run;

/// Entry point of the `weir` binary: parse, set up logging, run, and exit 1 on error.
pub fn main() {
    let cli = Cli::parse();
    init_tracing(log_format(&cli));
    if let Err(e) = run(cli, &mut io::stdout()) {
        eprintln!("weir: error: {e:#}");
        std::process::exit(1);
    }
}

/// The format of log lines: `weir serve`'s `--log-format` (or `WEIR_LOG_FORMAT`, or its TOML
/// file's `log_format`), else text. Decided before the configuration is resolved, so that the
/// errors of resolving it are logged in the chosen format too; a TOML file that does not load
/// is reported by `serve` itself.
fn log_format(cli: &Cli) -> LogFormat {
    let default = config::defaults::LOG_FORMAT;
    let default =
        <LogFormat as clap::ValueEnum>::from_str(default, false).unwrap_or(LogFormat::Text);
    let args::Command::Serve(args) = &cli.command else {
        return default;
    };
    if let Some(f) = args.log_format {
        return f;
    }
    args.config
        .as_deref()
        .and_then(|p| config::Settings::load(p).ok())
        .and_then(|s| s.log_format)
        .unwrap_or(default)
}

/// Logs to stderr, filtered by `WEIR_LOG` (tracing-subscriber's EnvFilter syntax; default
/// `info`), as text or one JSON object per line.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::defaults::LOG_LEVEL));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    // The filter can be replaced later: the file's `log_level`, at start and on SIGHUP.
    let _ = match format {
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            install_filter(b.reload_handle());
            b.try_init()
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            install_filter(b.reload_handle());
            b.try_init()
        }
    };
}

fn install_filter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) {
    config::reload::install_log_filter(Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
}
