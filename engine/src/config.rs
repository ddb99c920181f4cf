//! Server configuration: what `weir serve` runs with, after flags, environment and TOML are merged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weir_shaper::Rate;

/// Which I/O driver the workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring when the kernel offers what weir needs, epoll otherwise.
    Auto,
    /// io_uring only; fail to start if it is missing or refused.
    Uring,
    /// The readiness-based fallback driver.
    Epoll,
}

/// Which io_uring features the uring driver may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UringFeatures {
    /// Everything the probe finds (multishot accept, provided-buffer receives, COOP_TASKRUN).
    Full,
    /// Only what a 5.10 kernel has: single-shot accept, poll + recv, SENDMSG, timeouts.
    Minimal,
}

/// How large file bodies reach the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendPath {
    /// `send`/`sendmsg` (io_uring SENDMSG) straight from the memory-mapped file.
    Mmap,
    /// `sendfile(2)` from the content file for pieces of 64 KiB and more.
    Sendfile,
}

/// The default smallest send of a shaped connection (`--min-grant`): 32 KiB cost 18–26% less
/// server CPU per GiB than 16 KiB in a paired A/B (results/2026-11-23-shaping-grant), at the same
/// accuracy and stalled-socket memory.
pub const DEFAULT_MIN_GRANT: u64 = 32 * 1024;

/// The range `--min-grant` accepts: the shaper's smallest useful grant up to its largest
/// (`ShaperConfig::max_grant_bytes`, which the minimum must not exceed).
pub const MIN_GRANT_RANGE: std::ops::RangeInclusive<u64> = 4 * 1024..=256 * 1024;

/// Everything the server needs to run. Built by the CLI; tests may build it directly.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Data directory (SQLite database, content store, secrets).
    pub data_dir: PathBuf,
    /// Address the download listener binds (one SO_REUSEPORT socket per worker).
    pub listen: SocketAddr,
    /// Worker threads (one ring and one listener each). Default: number of cores.
    pub workers: usize,
    pub driver: DriverChoice,
    pub uring_features: UringFeatures,
    /// Most open client connections per worker; past it new ones get 503 + Retry-After.
    pub max_connections_per_worker: usize,
    /// Time allowed for a complete request head (slowloris guard).
    pub header_timeout: Duration,
    /// Idle time allowed on a keep-alive connection between requests.
    pub idle_timeout: Duration,
    /// Time a send may make no progress before the connection is closed.
    pub send_timeout: Duration,
    /// On SIGTERM: how long in-flight downloads may continue before they are cut.
    pub drain_timeout: Duration,
    /// How long a verified password stays cached.
    pub credential_cache_ttl: Duration,
    /// Threads verifying passwords and reading the store (never the I/O workers).
    pub auth_threads: usize,
    /// Global bandwidth cap for the host.
    pub global_rate: Rate,
    /// Rate for users that have none of their own.
    pub default_user_rate: Rate,
    /// Smallest body send of a shaped connection, bytes (the shaper's minimum grant): larger
    /// grants cost less CPU per byte and make a slow connection's bytes come in bigger, rarer
    /// steps.
    pub min_grant: u64,
    /// Completed items stay downloadable for this long.
    pub grace_period: Duration,
    /// Completion webhook.
    pub webhook: Option<String>,
    /// Admin listener address and bearer token.
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    /// Disable delivered-bytes accounting (benchmarks only).
    pub accounting: bool,
    /// Body send path (see results/2026-11-22-send-path).
    pub send_path: SendPath,
    /// Rate classes signed links may name (`r=NAME`): downloads through such a link are shaped
    /// as their own class `user/NAME` at this rate.
    pub rate_classes: std::collections::HashMap<String, Rate>,
}

impl ServeConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        ServeConfig {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            driver: DriverChoice::Auto,
            uring_features: UringFeatures::Full,
            max_connections_per_worker: 16_384,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            credential_cache_ttl: Duration::from_secs(60),
            auth_threads: 2,
            global_rate: Rate::Unlimited,
            default_user_rate: Rate::Unlimited,
            min_grant: DEFAULT_MIN_GRANT,
            grace_period: Duration::from_secs(600),
            webhook: None,
            admin_listen: None,
            admin_token: None,
            accounting: true,
            send_path: SendPath::Mmap,
            rate_classes: std::collections::HashMap::new(),
        }
    }
}
