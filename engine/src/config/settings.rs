//! One layer of `weir serve` settings (the flags with their environment variables, or the
//! `--config` TOML file), and the value syntax both share: durations, sizes, rates, rate classes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Deserializer};
use weir_shaper::Rate;

/// Settings given by one source; `None` (or empty) where that source says nothing. The TOML file
/// deserializes into it directly: its keys are the long flag names with underscores, values
/// with units written as strings (`"10s"`, `"4MiB"`), rate classes as a `[rate_classes]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "text")]
    pub listen: Option<Listen>,
    pub workers: Option<usize>,
    pub driver: Option<DriverChoice>,
    pub uring_features: Option<UringFeatures>,
    pub max_connections: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub send_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "text")]
    pub global_rate: Option<Rate>,
    #[serde(default, deserialize_with = "text")]
    pub default_rate: Option<Rate>,
    #[serde(default, deserialize_with = "text")]
    pub min_grant: Option<Size>,
    /// Later entries win over earlier ones of the same name.
    #[serde(default, deserialize_with = "rate_classes")]
    pub rate_classes: Vec<(String, Rate)>,
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<Duration>,
    pub webhook: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub auth_threads: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub credential_cache_ttl: Option<Duration>,
    pub no_accounting: Option<bool>,
    pub send_path: Option<SendPath>,
    /// Access log file (`-`: standard output).
    pub access_log: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Log filter (`info`, `debug`, `weir=debug,info`); the file only (`WEIR_LOG` overrides).
    pub log_level: Option<String>,
    /// HTTPS: `[tls]` in the TOML file, `--tls-*` flags.
    #[serde(default)]
    pub tls: TlsSettings,
}

/// The `[tls]` table (and the `--tls-listen`, `--tls-cert`, `--tls-key` flags): what one layer
/// says about HTTPS. Each key may come from a different layer.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    #[serde(default, deserialize_with = "text")]
    pub listen: Option<Listen>,
    /// PEM file: the server's certificate, then its chain (certbot's `fullchain.pem`).
    pub cert: Option<PathBuf>,
    /// PEM file: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: Option<PathBuf>,
}

/// A listener address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        s.trim()
            .parse::<SocketAddr>()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (an IP:PORT such as 0.0.0.0:443, or off)"))
    }
}

impl Settings {
    /// Reads a `--config` TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(text)
    }
}

/// A value written as a string in the TOML file and parsed like the flag.
struct FromText<T>(T);

impl<'de, T> Deserialize<'de> for FromText<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(FromText).map_err(serde::de::Error::custom)
    }
}

/// A duration in the TOML file (`"10s"`), parsed by [`parse_duration`].
struct TomlDuration(Duration);

impl FromStr for TomlDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(TomlDuration)
    }
}

/// A present TOML key holding a value with units, e.g. `listen = "0.0.0.0:8080"`.
fn text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    FromText::deserialize(d).map(|v| Some(v.0))
}

/// A present TOML key holding a duration, e.g. `header_timeout = "10s"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    FromText::<TomlDuration>::deserialize(d).map(|v| Some(v.0 .0))
}

/// `[rate_classes]` in the TOML file: `name = "RATE"`.
fn rate_classes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Rate)>, D::Error> {
    let table = BTreeMap::<String, FromText<Rate>>::deserialize(d)?;
    Ok(table
        .into_iter()
        .map(|(name, rate)| (name, rate.0))
        .collect())
}

/// A size in bytes, written like a rate without the per-second: `32KiB`, `64KB`, `16384`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let refuse = || format!("{s:?}: expected a size such as 32KiB, 64KB or 16384");
        if s.trim().eq_ignore_ascii_case("unlimited") || s.contains("bit") {
            return Err(refuse());
        }
        match s.parse::<Rate>() {
            Ok(Rate::BytesPerSec(b)) => Ok(Size(b)),
            _ => Err(refuse()),
        }
    }
}

/// Parses `10s`, `500ms`, `10m`, `1h 30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 10s, 10m, 1h)"))
}

/// `NAME=RATE` for `--rate-class`.
pub fn parse_rate_class(s: &str) -> Result<(String, Rate), String> {
    let (name, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=RATE, e.g. hd=4MiB"))?;
    if !crate::token::valid_field(name) {
        return Err(format!("rate class {name:?}: use letters, digits, . _ @ -"));
    }
    let rate = rate.parse::<Rate>().map_err(|e| e.to_string())?;
    Ok((name.to_string(), rate))
}

/// How log lines (and access log lines) are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the access log: logfmt `key=value` pairs).
    Text,
    /// One JSON object per line.
    Json,
}

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
