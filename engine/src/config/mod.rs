//! Server configuration: what `weir serve` runs with, and the only place that decides it.
//!
//! [`defaults`] holds every default; [`Settings`] is one layer of given settings (the flags with
//! their `WEIR_*` environment variables, as the CLI parsed them, or the `--config` TOML file);
//! [`resolve`] stacks them: flag > environment variable > TOML file > default, and checks the
//! result.

pub mod defaults;
pub mod reload;
mod settings;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::ensure;
use clap::ValueEnum;
use weir_shaper::Rate;

pub use settings::{parse_duration, parse_rate_class, Listen, Settings, Size, TlsSettings};
pub use settings::{DriverChoice, LogFormat, SendPath, UringFeatures};

/// The range `--min-grant` accepts: the shaper's smallest useful grant up to its largest
/// (`ShaperConfig::max_grant_bytes`, which the minimum must not exceed).
pub const MIN_GRANT_RANGE: std::ops::RangeInclusive<u64> = 4 * 1024..=256 * 1024;

/// The HTTPS listener and the PEM files it serves (reloaded on SIGHUP and `POST /tls/reload`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsListen {
    pub listen: SocketAddr,
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the server needs to run. Built by [`resolve`]; tests may build it directly.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Data directory (SQLite database, content store, secrets).
    pub data_dir: PathBuf,
    /// Address the plain-HTTP download listener binds (one SO_REUSEPORT socket per worker);
    /// `None`: `--listen off` (HTTPS only).
    pub listen: Option<SocketAddr>,
    /// HTTPS served by weir itself (`--tls-listen`), with its certificate files.
    pub tls: Option<TlsListen>,
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
    /// Access log target (`-`: standard output); none: no access log.
    pub access_log: Option<String>,
    /// Format of log and access log lines.
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber's EnvFilter syntax); `WEIR_LOG` overrides it.
    pub log_level: String,
    /// Where a SIGHUP re-reads the configuration from (`--config`); none: SIGHUP reloads only
    /// the TLS certificate.
    pub reload: Option<ReloadSource>,
}

impl ServeConfig {
    /// Defaults for everything but the data directory: the values of [`defaults`], parsed.
    pub fn new(data_dir: PathBuf) -> Self {
        ServeConfig {
            data_dir,
            listen: value::<Listen>(defaults::LISTEN).0,
            tls: None,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            driver: choice(defaults::DRIVER),
            uring_features: choice(defaults::URING_FEATURES),
            max_connections_per_worker: value(defaults::MAX_CONNECTIONS),
            header_timeout: duration(defaults::HEADER_TIMEOUT),
            idle_timeout: duration(defaults::IDLE_TIMEOUT),
            send_timeout: duration(defaults::SEND_TIMEOUT),
            drain_timeout: duration(defaults::DRAIN_TIMEOUT),
            credential_cache_ttl: duration(defaults::CREDENTIAL_CACHE_TTL),
            auth_threads: value(defaults::AUTH_THREADS),
            global_rate: value(defaults::GLOBAL_RATE),
            default_user_rate: value(defaults::DEFAULT_RATE),
            min_grant: value::<Size>(defaults::MIN_GRANT).0,
            grace_period: duration(defaults::GRACE),
            webhook: None,
            admin_listen: None,
            admin_token: None,
            accounting: true,
            send_path: choice(defaults::SEND_PATH),
            rate_classes: std::collections::HashMap::new(),
            access_log: None,
            log_format: choice(defaults::LOG_FORMAT),
            log_level: defaults::LOG_LEVEL.to_string(),
            reload: None,
        }
    }

    /// Overrides what `layer` sets.
    fn apply(&mut self, layer: &Settings) {
        fn set<T: Clone>(field: &mut T, given: &Option<T>) {
            if let Some(v) = given {
                *field = v.clone();
            }
        }
        set(&mut self.data_dir, &layer.data_dir);
        if let Some(Listen(addr)) = layer.listen {
            self.listen = addr;
        }
        set(&mut self.workers, &layer.workers);
        set(&mut self.driver, &layer.driver);
        set(&mut self.uring_features, &layer.uring_features);
        set(&mut self.max_connections_per_worker, &layer.max_connections);
        set(&mut self.header_timeout, &layer.header_timeout);
        set(&mut self.idle_timeout, &layer.idle_timeout);
        set(&mut self.send_timeout, &layer.send_timeout);
        set(&mut self.drain_timeout, &layer.drain_timeout);
        set(&mut self.global_rate, &layer.global_rate);
        set(&mut self.default_user_rate, &layer.default_rate);
        if let Some(Size(v)) = layer.min_grant {
            self.min_grant = v;
        }
        set(&mut self.grace_period, &layer.grace);
        set(&mut self.credential_cache_ttl, &layer.credential_cache_ttl);
        set(&mut self.auth_threads, &layer.auth_threads);
        // Off unless some layer turns them on.
        if let Some(url) = &layer.webhook {
            self.webhook = Some(url.clone());
        }
        if let Some(addr) = layer.admin_listen {
            self.admin_listen = Some(addr);
        }
        if let Some(token) = &layer.admin_token {
            self.admin_token = Some(token.clone());
        }
        if let Some(off) = layer.no_accounting {
            self.accounting = !off;
        }
        set(&mut self.send_path, &layer.send_path);
        set(&mut self.log_format, &layer.log_format);
        set(&mut self.log_level, &layer.log_level);
        if let Some(path) = &layer.access_log {
            self.access_log = Some(path.clone());
        }
        self.rate_classes
            .extend(layer.rate_classes.iter().map(|(n, r)| (n.clone(), *r)));
    }

    /// Refuses values the server cannot run with, naming the flag.
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.workers > 0, "--workers must be at least 1");
        ensure!(
            self.listen.is_some() || self.tls.is_some(),
            "--listen off needs --tls-listen: weir would listen nowhere"
        );
        ensure!(
            self.max_connections_per_worker > 0,
            "--max-connections must be at least 1"
        );
        ensure!(self.auth_threads > 0, "--auth-threads must be at least 1");
        ensure!(
            MIN_GRANT_RANGE.contains(&self.min_grant),
            "--min-grant must be 4KiB to 256KiB, not {} bytes",
            self.min_grant
        );
        for (name, d) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--send-timeout", self.send_timeout),
        ] {
            ensure!(!d.is_zero(), "{name} must be greater than zero");
        }
        if let Some(path) = &self.access_log {
            ensure!(
                !path.is_empty(),
                "--access-log needs a path (or - for stdout)"
            );
        }
        ensure!(
            tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok(),
            "log_level {:?} is not a log filter (e.g. info, debug, weir=debug)",
            self.log_level
        );
        if let Some(url) = &self.webhook {
            ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--webhook must be an http:// or https:// URL, not {url:?}"
            );
        }
        Ok(())
    }
}

/// The server configuration from the given flags (their environment variables included), the
/// TOML file, and the defaults, in that order of precedence.
pub fn resolve(flags: &Settings, file: &Settings) -> anyhow::Result<ServeConfig> {
    let mut cfg = ServeConfig::new(data_dir(None));
    cfg.apply(file);
    cfg.apply(flags);
    cfg.tls = tls(&flags.tls, &file.tls)?;
    cfg.check()?;
    Ok(cfg)
}

/// The HTTPS listener the flags and the file ask for: none unless `--tls-listen` (or the
/// file's `[tls] listen`) names an address; then both PEM files are required.
fn tls(flags: &TlsSettings, file: &TlsSettings) -> anyhow::Result<Option<TlsListen>> {
    let listen = flags.listen.or(file.listen).and_then(|l| l.0);
    let cert = flags.cert.clone().or_else(|| file.cert.clone());
    let key = flags.key.clone().or_else(|| file.key.clone());
    let Some(listen) = listen else {
        return Ok(None);
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsListen { listen, cert, key })),
        _ => anyhow::bail!("--tls-listen needs --tls-cert FULLCHAIN.pem and --tls-key KEY.pem"),
    }
}

/// [`resolve`] with the TOML file at `path`, if any.
pub fn resolve_with_file(flags: &Settings, path: Option<&Path>) -> anyhow::Result<ServeConfig> {
    let file = match path {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    resolve(flags, &file)
}

/// The data directory of the commands that take no TOML file: the flag's, or the default.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR))
}

/// Parses a default of [`defaults`] with the parser its flag uses.
fn value<T: FromStr>(text: &str) -> T
where
    T::Err: Debug,
{
    text.parse()
        .unwrap_or_else(|e| panic!("default {text:?}: {e:?}"))
}

fn duration(text: &str) -> Duration {
    parse_duration(text).unwrap_or_else(|e| panic!("default {text:?}: {e}"))
}

fn choice<T: ValueEnum>(text: &str) -> T {
    T::from_str(text, false).unwrap_or_else(|e| panic!("default {text:?}: {e}"))
}

/// What `weir serve` was started with, so that a SIGHUP resolves the file the same way: the flags
/// (with their environment variables) and the TOML file they are layered over. Re-read by
/// [`reload`] (`ReloadSource::read`).
#[derive(Clone, Debug)]
pub struct ReloadSource {
    pub flags: Settings,
    pub file: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn tls_from_flags_and_the_file_and_plain_http_off() {
        let file = Settings::from_toml(
            "listen = \"off\"\n[tls]\nlisten = \"0.0.0.0:443\"\ncert = \"/etc/weir/full.pem\"\nkey = \"/etc/weir/key.pem\"\n",
        )
        .unwrap();
        let cfg = resolve(&Settings::default(), &file).unwrap();
        assert_eq!(cfg.listen, None);
        let tls = cfg.tls.unwrap();
        assert_eq!(tls.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(tls.cert, Path::new("/etc/weir/full.pem"));
        // A flag overrides one key of the file's table.
        let flags = Settings {
            tls: TlsSettings {
                key: Some("/run/key.pem".into()),
                ..TlsSettings::default()
            },
            ..Settings::default()
        };
        let cfg = resolve(&flags, &file).unwrap();
        assert_eq!(cfg.tls.unwrap().key, Path::new("/run/key.pem"));
        // No certificate: refused, naming the flags.
        let half = Settings::from_toml("[tls]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
        let err = resolve(&Settings::default(), &half).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        // Listening nowhere: refused.
        let nowhere = Settings::from_toml("listen = \"off\"\n").unwrap();
        assert!(resolve(&Settings::default(), &nowhere).is_err());
        // Plain HTTP stays on by default beside TLS.
        let both =
            Settings::from_toml("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\n")
                .unwrap();
        let cfg = resolve(&Settings::default(), &both).unwrap();
        assert_eq!(cfg.listen, Some(defaults::LISTEN.parse().unwrap()));
        assert!(cfg.tls.is_some());
    }

    #[test]
    fn min_grant_range_fits_the_shaper() {
        let max = weir_shaper::ShaperConfig::default().max_grant_bytes;
        assert!(*MIN_GRANT_RANGE.end() <= max);
    }

    #[test]
    fn access_log_and_log_format_come_from_the_file_too() {
        let file = Settings::from_toml(
            "access_log = \"/var/log/weir/access.log\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let cfg = resolve(&Settings::default(), &file).unwrap();
        assert_eq!(cfg.access_log.as_deref(), Some("/var/log/weir/access.log"));
        assert_eq!(cfg.log_format, LogFormat::Json);
        let none = resolve(&Settings::default(), &Settings::default()).unwrap();
        assert_eq!((none.access_log, none.log_format), (None, LogFormat::Text));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let file = Settings::from_toml(
            "data_dir = \"/srv/weir\"\nworkers = 2\nidle_timeout = \"5s\"\nno_accounting = true\n\
             [rate_classes]\nhd = \"4MiB\"\nsd = \"1MiB\"\n",
        )
        .unwrap();
        let flags = Settings {
            workers: Some(7),
            rate_classes: vec![("hd".into(), Rate::BytesPerSec(8 << 20))],
            ..Settings::default()
        };
        let cfg = resolve(&flags, &file).unwrap();
        assert_eq!(cfg.data_dir, Path::new("/srv/weir"));
        assert_eq!(cfg.workers, 7);
        assert_eq!(cfg.idle_timeout, Duration::from_secs(5));
        assert!(!cfg.accounting);
        assert_eq!(cfg.rate_classes["hd"], Rate::BytesPerSec(8 << 20));
        assert_eq!(cfg.rate_classes["sd"], Rate::BytesPerSec(1 << 20));
        let none = resolve(&Settings::default(), &Settings::default()).unwrap();
        assert_eq!(none.data_dir, Path::new(defaults::DATA_DIR));
        assert_eq!(none.send_timeout, duration(defaults::SEND_TIMEOUT));
    }
}
