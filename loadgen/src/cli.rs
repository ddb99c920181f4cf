//! Command-line interface (clap derive). Invalid flags get clap's usage error and exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Parse `60s`, `1m30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// weir-load: download-manager load generator with HdrHistogram results.
#[derive(Debug, Parser)]
#[command(name = "weir-load", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios and tools.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// U users, each a download manager with K ranged connections to one file.
    Forty(FortyArgs),
    /// N loops each fetching the same URL in full, again and again.
    Urlopen(UrlopenArgs),
    /// Open model: Poisson arrivals per second (ramp, then plateau), each fetching the URL.
    Rate(RateArgs),
    /// Print the percentiles of stored runs side by side with ratios, and plot them.
    Compare(CompareArgs),
    /// Start `weir serve` on a fresh data dir and a free port, run a short forty, stop it.
    Demo(DemoArgs),
}

/// Settings every load scenario has.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Drop a connection that moves no byte for this long (and reopen it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Local source addresses: a range (127.0.0.2-127.0.0.50), a CIDR block, or a list.
    #[arg(long)]
    pub source: Option<String>,
    /// Results directory [default: results/<scenario>-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Event-loop threads [default: one per core]. Against a server on the same machine fewer
    /// can drive more (they share its cores): see the README.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Spread the run over this many processes (each its own file limit), merged at the end.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// https:// targets: trust the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// https:// targets: accept any server certificate (handshake signatures are still checked).
    #[arg(long, conflicts_with = "cacert")]
    pub insecure: bool,
    /// https:// targets: offer only these cipher suites, comma-separated rustls names
    /// (TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ...) [default: all of rustls' safe ones].
    #[arg(long, value_name = "LIST")]
    pub tls_ciphers: Option<String>,
    /// Internal: this process is child I of N of a --processes run.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// `forty` flags.
#[derive(Debug, Clone, Args)]
pub struct FortyArgs {
    /// The file to download (http[s]://host:port/path?query).
    pub url: String,
    /// Simulated users, each one download manager.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Ranged connections per user (K).
    #[arg(long, default_value_t = 40)]
    pub connections: usize,
    /// How long the run lasts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// USER:PASSWORD for every user (Basic auth).
    #[arg(long)]
    pub credentials: Option<String>,
    /// A file of USER:PASSWORD lines; users take lines round robin.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Expected SHA-256 of the file (hex): verify every download's bytes.
    #[arg(long)]
    pub sha256: Option<String>,
    /// With --sha256: build the per-block verification list from this local copy of the file
    /// instead of a reference GET before the run (which would be one more download).
    #[arg(long, value_name = "FILE", requires = "sha256")]
    pub reference_file: Option<PathBuf>,
    /// Give a download up once its failures (refused connects, resets, error statuses) have
    /// gone on this long with no progress in between [default: retry until the run ends].
    /// Until then a user reconnects with back-off and resumes every range from the bytes it
    /// holds, also across a server restart.
    #[arg(long, value_parser = parse_duration)]
    pub retry_for: Option<Duration>,
    /// Append one JSON line per finished download to FILE: {"user", "download", "bytes",
    /// "verified", "took_ms"} (user = global index, download = the user's number from 0).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Start download N of user U only once the file DIR/U-N exists (a harness opens it when
    /// that user's next purchase is in the cart).
    #[arg(long, value_name = "DIR")]
    pub gate: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// `urlopen` flags.
#[derive(Debug, Clone, Args)]
pub struct UrlopenArgs {
    /// The URL to fetch.
    pub url: String,
    /// Concurrent loops (each one connection).
    #[arg(long, default_value_t = 40)]
    pub threads: usize,
    /// How long the run lasts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A new connection for every request.
    #[arg(long)]
    pub no_keepalive: bool,
    /// USER:PASSWORD (Basic auth).
    #[arg(long)]
    pub credentials: Option<String>,
    /// Expected SHA-256 of every response body (hex).
    #[arg(long)]
    pub sha256: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// `rate` flags.
#[derive(Debug, Clone, Args)]
pub struct RateArgs {
    /// The URL to fetch.
    pub url: String,
    /// Arrivals per second on the plateau.
    #[arg(long)]
    pub rate: f64,
    /// How long the run lasts (ramp included).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Ramp from 0 to --rate over this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Most arrivals in flight at once (each one connection); later ones wait, and their
    /// waiting counts in the corrected latency.
    #[arg(long, default_value_t = 1000)]
    pub max_users: usize,
    /// A new connection for every arrival (default: reuse idle keep-alive connections).
    #[arg(long)]
    pub no_keepalive: bool,
    /// USER:PASSWORD (Basic auth).
    #[arg(long)]
    pub credentials: Option<String>,
    /// Seed of the arrival process (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// `compare` flags.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Results directories (the first is the baseline of the ratios).
    #[arg(required = true, num_args = 2..)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the comparison plot [default: compare.svg in the current directory].
    #[arg(long, default_value = "compare.svg")]
    pub plot: PathBuf,
}

/// `demo` flags.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The weir binary [default: next to weir-load, else on PATH].
    #[arg(long)]
    pub weir: Option<PathBuf>,
    /// Users of the forty run.
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    /// Connections per user.
    #[arg(long, default_value_t = 40)]
    pub connections: usize,
    /// Length of the forty run.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to wait for the server to say it listens.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// Results directory [default: results/demo-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
}
