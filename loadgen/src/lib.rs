//! weir-load: a load generator for download servers, good enough to point at any HTTP/1.1 server
//! (nginx included) and built to reproduce the case that breaks them: a download manager opening
//! 40 ranged connections to one file.
//!
//! Scenarios ([`forty`], [`urlopen`], [`rate`]) drive connections on per-thread readiness event
//! loops ([`worker`]) and record per-worker HdrHistograms ([`histograms`]) and counters
//! ([`stats`]), merged once at the end into results ([`summary`]) that printers turn into files
//! ([`hgrm`], [`hlog`], [`plot`]) and a live line ([`progress`]). [`compare`] reads only stored
//! results. The download-manager bookkeeping is in [`manager`], exact-bytes verification in
//! [`verify`].
//!
//! `https://` targets are spoken over TLS ([`tls`]: rustls, trust from `--cacert` or
//! `--insecure`); the histograms measure the same things as in clear text, and the TLS handshake
//! is counted on its own.
//!
//! What it is not: a browser, or a tool for targets you do not own. Every run is
//! bounded by its duration and connection counts and stops by itself.
//!
//! The binary is a thin shell over [`run`], so tests drive it in-process:
//!
//! ```
//! use clap::Parser;
//! let cli = weir_load::cli::Cli::try_parse_from(["weir-load", "compare", "a"]);
//! assert!(cli.is_err(), "compare needs two directories");
//! ```

pub mod cli;
pub mod compare;
pub mod conn;
pub mod demo;
pub mod downloads;
pub mod errors;
pub mod forty;
pub mod hgrm;
pub mod histograms;
pub mod hlog;
pub mod http;
pub mod manager;
pub mod plot;
pub mod processes;
pub mod progress;
pub mod rate;
pub mod retry;
pub mod runner;
pub mod source;
pub mod stats;
pub mod summary;
pub mod sys;
pub mod target;
pub mod tls;
pub mod urlopen;
pub mod verify;
pub mod worker;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Run a parsed command line. Scenario results are printed to stdout; the exit code is 0 for a
/// run that happened (errors counted inside it are results, not failures), 2 for unusable
/// input (`compare` on a directory that is not a result), 1 for anything else that failed.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Forty(a) => processes::dispatch(&a.common.clone(), "forty", || forty::command(&a)),
        Command::Urlopen(a) => {
            processes::dispatch(&a.common.clone(), "urlopen", || urlopen::command(&a))
        }
        Command::Rate(a) => processes::dispatch(&a.common.clone(), "rate", || rate::command(&a)),
        Command::Compare(a) => compare::command(&a),
        Command::Demo(a) => demo::command(&a),
    }
}
