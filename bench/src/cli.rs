//! Command line of `weir-bench`.
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::scenarios::Scenario;

/// Whole-system benchmarks: weir against nginx on the same files, in one run.
#[derive(Debug, Parser)]
#[command(name = "weir-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Issue 2's first benchmark: 1 GiB with axel -n 40, 40 ranged curls and wrk -c40; 4 KiB
    /// under wrk -c100; memory of 10,000 idle and 10,000 stalled connections.
    First(FirstArgs),
    /// Issue 3: the 40-connection scenario with completion accounting on vs off (weir-load forty).
    Overhead(crate::overhead::Args),
    /// Issue 5: weir-load urlopen vs wrk, forty vs axel -n 40, and connections held (against nginx).
    Loadgen(crate::loadgen_bench::Args),
    /// Issue 4: shaping accuracy, 200 users x 40 connections, with and without a global cap.
    Shaping(crate::shaping::Args),
    /// Issue 2's send-path lab: io_uring SEND / SEND_ZC / SPLICE, sendfile and splice from a
    /// mapped file over loopback, without a server (was `cargo run --example send_path`).
    SendPath(crate::send_path::Args),
    /// Two weir binaries in one run: full speed (1 GiB, 40 ranged curls), 4 KiB requests/s
    /// (wrk -c100) and reduced shaping accuracy; after/before ratios of the medians.
    BeforeAfter(crate::before_after::Args),
    /// Issue 14: SIGKILL weir at random moments while users download with resuming clients;
    /// count completions lost, duplicated and false, and webhook keys per completion.
    Chaos(crate::chaos::Args),
    /// Issue 15: weir --tls-listen vs nginx ssl: 1 GiB over 40 connections, 4 KiB keep-alive,
    /// new TLS connections/s, idle and stalled TLS connection memory (`--servers nginx` alone
    /// as a smoke test).
    Tls(crate::tls_bench::Args),
    /// Renders the tables the top-level README quotes from the stored results under results/.
    Report(crate::results::Args),
}

#[derive(Debug, Args)]
pub struct FirstArgs {
    /// Measured runs per scenario and server (servers alternate; medians are reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Result directory [default: results/DATE-first]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Scenarios to run, comma separated [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Scenario>,
    /// weir's I/O driver(s); each is a target of its own, compared with nginx
    #[arg(long, value_delimiter = ',', default_value = "uring")]
    pub weir_driver: Vec<String>,
    /// A short smoke run: 1 run, 256 MiB file, 3 s wrk, 1,000 held connections
    #[arg(long)]
    pub quick: bool,
    /// Use this weir binary instead of building target/release/weir
    #[arg(long, value_name = "PATH")]
    pub weir_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p weir` first
    #[arg(long)]
    pub no_build: bool,
    /// Extra argument for `weir serve`, repeatable (e.g. --weir-arg=--send-path=sendfile)
    #[arg(long = "weir-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub weir_args: Vec<String>,
    /// Size of the big file in MiB [default: 1024, 256 with --quick]
    #[arg(long, value_name = "MiB")]
    pub big_mib: Option<u64>,
    /// Seconds per wrk run [default: 10, 3 with --quick]
    #[arg(long, value_name = "S")]
    pub wrk_seconds: Option<u64>,
    /// Connections held open in the idle and stalled scenarios [default: 10000, 1000 with --quick]
    #[arg(long, value_name = "N")]
    pub conns: Option<usize>,
    /// Scratch directory for fixtures and server state [default: a new temp dir under /tmp]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Where axel writes (a tmpfs, so the client's disk is not what is measured)
    #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
    pub axel_dir: PathBuf,
}
