//! The `weir` command line: manage the data directory (users, items, carts), mint signed links,
//! and start the server.
//!
//! Thin on purpose: parsing and printing live here, the work in [`crate::store`],
//! [`crate::catalog`], [`crate::token`], [`crate::demo`] and [`crate::server`]. [`run`] executes
//! parsed arguments against any writer, so tests drive the CLI in-process.
//!
//! `weir serve` settings are merged with this precedence: command-line flag, then environment
//! variable (`WEIR_LISTEN`, `WEIR_WORKERS`, ...: each flag's name in upper case with `WEIR_`),
//! then the TOML file given by `--config` (the flags' long names with underscores:
//! `listen = "0.0.0.0:8080"`, `global_rate = "4MiB"`, `header_timeout = "10s"`,
//! `no_accounting = false`, and `data_dir`), then the built-in defaults of
//! [`ServeConfig::new`].

use std::fs;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use clap::{Args, Parser, Subcommand};
use weir_shaper::Rate;

use crate::config::{DriverChoice, ServeConfig, UringFeatures, MIN_GRANT_RANGE};
use crate::storage::Storage as _;
use crate::store::{valid_id, ItemKind, Store};
use crate::{catalog, demo, password, token};

/// The data directory when neither `--data-dir`, `WEIR_DATA_DIR` nor the TOML file names one.
pub const DEFAULT_DATA_DIR: &str = "./weir-data";

const SERVE_AFTER_HELP: &str = "\
Precedence: flag > environment variable > --config TOML file > default.
The TOML file uses the long flag names with underscores, values as strings where the flag takes
units, for example:
    listen = \"0.0.0.0:8080\"
    workers = 4
    global_rate = \"80Mbit\"
    default_rate = \"2MiB\"
    min_grant = \"32KiB\"
    header_timeout = \"10s\"
    data_dir = \"/var/lib/weir\"
Rates: 512KiB, 2MiB, 10MB, 80Mbit, unlimited. Sizes: 32KiB, 64KB. Durations: 500ms, 10s, 10m, 1h.";

/// Controlled-download server: authorized, bandwidth-shaped, completion-tracked downloads.
#[derive(Debug, Parser)]
#[command(name = "weir", version, propagate_version = true)]
pub struct Cli {
    /// Data directory: database, content store, link secret [default: ./weir-data]
    #[arg(long, global = true, env = "WEIR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add, change and list users
    #[command(subcommand)]
    User(UserCommand),
    /// Add and list items (files; `item list` shows albums too)
    #[command(subcommand)]
    Item(ItemCommand),
    /// Add albums: ordered tracks, downloadable one by one or as a zip
    #[command(subcommand)]
    Album(AlbumCommand),
    /// Put items in a user's cart (what the user may download), remove, list
    #[command(subcommand)]
    Cart(CartCommand),
    /// List a user's completed downloads
    History {
        /// User name
        user: String,
        /// One JSON object per line: {"item", "completed_at_ms"}
        #[arg(long)]
        json: bool,
    },
    /// Print a signed download link (what the shop's web app would mint)
    Token(TokenArgs),
    /// Run the download server (with no data directory yet: on a demo catalog)
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(Box<ServeArgs>),
}

/// Where a new password comes from. Never from an argument: it would show in `ps` and history.
#[derive(Debug, Args)]
pub struct PasswordSource {
    /// Read the password from the first line of standard input
    #[arg(long, conflicts_with = "password_file")]
    pub password_stdin: bool,
    /// Read the password from the first line of FILE
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (password from --password-stdin or --password-file)
    Add {
        /// User name: 1-128 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit
        name: String,
        #[command(flatten)]
        password: PasswordSource,
        /// The user's bandwidth cap across all connections [default: the server's --default-rate]
        #[arg(long, value_name = "RATE")]
        rate: Option<Rate>,
    },
    /// Change a user's rate or password
    Set {
        /// User name
        name: String,
        /// New cap: a rate such as 2MiB, `unlimited`, or `default` for the server's --default-rate
        #[arg(long, value_name = "RATE|unlimited|default")]
        rate: Option<RateSetting>,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List users and their rates
    List {
        /// One JSON object per line: {"name", "rate"} (rate null = server default)
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// Import FILE into the content store as item ID
    Add {
        /// Item id (appears in URLs): 1-128 of A-Z a-z 0-9 . _ @ -
        id: String,
        /// The file to import (copied; later changes to it do not matter)
        file: PathBuf,
    },
    /// List all items, files and albums
    List {
        /// One JSON object per line: {"id", "kind", "size", "parts": [...]}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlbumCommand {
    /// Import the tracks, in the order given, as album ID
    Add {
        /// Album id (appears in URLs): 1-128 of A-Z a-z 0-9 . _ @ -
        id: String,
        /// Track files, in album order; their file names must differ
        #[arg(required = true, value_name = "TRACK_FILE")]
        tracks: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CartCommand {
    /// Allow USER to download item ID
    Add { user: String, id: String },
    /// Take item ID out of USER's cart
    Remove { user: String, id: String },
    /// List USER's cart
    List {
        user: String,
        /// One JSON object per line: {"item", "added_at_ms", "delivered_bytes", "size_bytes"}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User the link is for
    #[arg(long)]
    pub user: String,
    /// Item the link grants
    #[arg(long)]
    pub item: String,
    /// How long the link stays valid: seconds, or 90m, 12h, ...
    #[arg(long, default_value = "3600", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Rate class to download in (a name the server knows)
    #[arg(long, value_name = "NAME")]
    pub rate_class: Option<String>,
    /// Prefix the printed path with this URL, e.g. http://127.0.0.1:8080
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
}

/// `weir serve` options. Every one is optional: unset ones come from the TOML file or defaults.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address for downloads [default: 127.0.0.1:8080]
    #[arg(long, env = "WEIR_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Worker threads, one io_uring/epoll loop each [default: number of CPUs]
    #[arg(long, env = "WEIR_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// I/O driver: io_uring when usable (auto), io_uring only, or epoll [default: auto]
    #[arg(long, env = "WEIR_DRIVER", value_enum)]
    pub driver: Option<DriverChoice>,
    /// io_uring features: all the kernel offers, or only 5.10's [default: full]
    #[arg(long, env = "WEIR_URING_FEATURES", value_enum)]
    pub uring_features: Option<UringFeatures>,
    /// Open connections per worker before new ones get 503 [default: 16384]
    #[arg(long, env = "WEIR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time allowed to send a complete request head [default: 10s]
    #[arg(long, env = "WEIR_HEADER_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Option<Duration>,
    /// Idle time allowed between keep-alive requests [default: 60s]
    #[arg(long, env = "WEIR_IDLE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,
    /// Time a send may make no progress before the connection is closed [default: 60s]
    #[arg(long, env = "WEIR_SEND_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub send_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight downloads may finish [default: 30s]
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,
    /// Bandwidth cap for the whole host [default: unlimited]
    #[arg(long, env = "WEIR_GLOBAL_RATE", value_name = "RATE")]
    pub global_rate: Option<Rate>,
    /// Cap for users without a rate of their own [default: unlimited]
    #[arg(long, env = "WEIR_DEFAULT_RATE", value_name = "RATE")]
    pub default_rate: Option<Rate>,
    /// Smallest send of a shaped download, 4KiB to 256KiB: larger costs less CPU per byte,
    /// in bigger steps per connection [default: 32KiB]
    #[arg(long, env = "WEIR_MIN_GRANT", value_name = "SIZE")]
    pub min_grant: Option<Size>,
    /// A rate class signed links may carry (r=NAME), e.g. `hd=4MiB`; repeatable
    #[arg(long = "rate-class", value_name = "NAME=RATE", value_parser = parse_rate_class)]
    pub rate_class: Vec<(String, Rate)>,
    /// How long a completed item stays downloadable [default: 10m]
    #[arg(long, env = "WEIR_GRACE", value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// URL to POST completion events to
    #[arg(long, env = "WEIR_WEBHOOK", value_name = "URL")]
    pub webhook: Option<String>,
    /// Address of the admin listener (metrics, live rates, drain) [default: off]
    #[arg(long, env = "WEIR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Admin bearer token [default: the one in DATA_DIR/admin-token]
    #[arg(
        long,
        env = "WEIR_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Threads that verify passwords and read the store [default: 2]
    #[arg(long, env = "WEIR_AUTH_THREADS", value_name = "N")]
    pub auth_threads: Option<usize>,
    /// How long a verified password stays cached [default: 60s]
    #[arg(long, env = "WEIR_CREDENTIAL_CACHE_TTL", value_parser = parse_duration, value_name = "DURATION")]
    pub credential_cache_ttl: Option<Duration>,
    /// Do not account delivered bytes (benchmarks only: nothing ever completes)
    #[arg(long, hide = true)]
    pub no_accounting: bool,
    /// How large bodies reach the socket: from the mapping (send) or with sendfile [default: mmap]
    #[arg(long, env = "WEIR_SEND_PATH", value_enum)]
    pub send_path: Option<crate::config::SendPath>,
    /// TOML file with any of these settings (see below)
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

/// `NAME=RATE` for `--rate-class`.
fn parse_rate_class(s: &str) -> Result<(String, Rate), String> {
    let (name, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=RATE, e.g. hd=4MiB"))?;
    if !crate::token::valid_field(name) {
        return Err(format!("rate class {name:?}: use letters, digits, . _ @ -"));
    }
    let rate = rate.parse::<Rate>().map_err(|e| e.to_string())?;
    Ok((name.to_string(), rate))
}

/// A user's rate as `weir user set --rate` takes it: a rate, `unlimited`, or `default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateSetting {
    /// Follow the server's `--default-rate`.
    Default,
    Rate(Rate),
}

impl FromStr for RateSetting {
    type Err = weir_shaper::ParseRateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("default") {
            Ok(RateSetting::Default)
        } else {
            s.parse().map(RateSetting::Rate)
        }
    }
}

impl RateSetting {
    fn into_option(self) -> Option<Rate> {
        match self {
            RateSetting::Default => None,
            RateSetting::Rate(r) => Some(r),
        }
    }
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

/// A value written as a string in the TOML file and parsed like the flag.
#[derive(Debug, Clone, Copy)]
struct FromText<T>(T);

impl<'de, T> serde::Deserialize<'de> for FromText<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(FromText).map_err(serde::de::Error::custom)
    }
}

/// A duration in the TOML file (`"10s"`), parsed by [`parse_duration`].
#[derive(Debug, Clone, Copy)]
struct TomlDuration(Duration);

impl FromStr for TomlDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(TomlDuration)
    }
}

/// The `--config` file: the long flag names with underscores.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<FromText<SocketAddr>>,
    workers: Option<usize>,
    driver: Option<DriverChoice>,
    uring_features: Option<UringFeatures>,
    max_connections: Option<usize>,
    header_timeout: Option<FromText<TomlDuration>>,
    idle_timeout: Option<FromText<TomlDuration>>,
    send_timeout: Option<FromText<TomlDuration>>,
    drain_timeout: Option<FromText<TomlDuration>>,
    global_rate: Option<FromText<Rate>>,
    default_rate: Option<FromText<Rate>>,
    min_grant: Option<FromText<Size>>,
    rate_classes: Option<std::collections::BTreeMap<String, FromText<Rate>>>,
    grace: Option<FromText<TomlDuration>>,
    webhook: Option<String>,
    admin_listen: Option<FromText<SocketAddr>>,
    admin_token: Option<String>,
    auth_threads: Option<usize>,
    credential_cache_ttl: Option<FromText<TomlDuration>>,
    no_accounting: Option<bool>,
    send_path: Option<crate::config::SendPath>,
}

impl FileConfig {
    fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// Builds the server configuration from flags (and their environment variables), the TOML file
/// and the defaults, in that order of precedence. `data_dir` is already resolved.
fn serve_config(
    args: &ServeArgs,
    file: &FileConfig,
    data_dir: PathBuf,
) -> anyhow::Result<ServeConfig> {
    fn pick<T: Copy>(flag: Option<T>, file: Option<FromText<T>>) -> Option<T> {
        flag.or(file.map(|f| f.0))
    }
    fn pick_dur(flag: Option<Duration>, file: Option<FromText<TomlDuration>>) -> Option<Duration> {
        flag.or(file.map(|f| f.0 .0))
    }
    let mut cfg = ServeConfig::new(data_dir);
    if let Some(v) = pick(args.listen, file.listen) {
        cfg.listen = v;
    }
    if let Some(v) = args.workers.or(file.workers) {
        cfg.workers = v;
    }
    if let Some(v) = args.driver.or(file.driver) {
        cfg.driver = v;
    }
    if let Some(v) = args.uring_features.or(file.uring_features) {
        cfg.uring_features = v;
    }
    if let Some(v) = args.max_connections.or(file.max_connections) {
        cfg.max_connections_per_worker = v;
    }
    if let Some(v) = pick_dur(args.header_timeout, file.header_timeout) {
        cfg.header_timeout = v;
    }
    if let Some(v) = pick_dur(args.idle_timeout, file.idle_timeout) {
        cfg.idle_timeout = v;
    }
    if let Some(v) = pick_dur(args.send_timeout, file.send_timeout) {
        cfg.send_timeout = v;
    }
    if let Some(v) = pick_dur(args.drain_timeout, file.drain_timeout) {
        cfg.drain_timeout = v;
    }
    if let Some(v) = pick(args.global_rate, file.global_rate) {
        cfg.global_rate = v;
    }
    if let Some(v) = pick(args.default_rate, file.default_rate) {
        cfg.default_user_rate = v;
    }
    if let Some(v) = pick(args.min_grant, file.min_grant) {
        cfg.min_grant = v.0;
    }
    if let Some(v) = pick_dur(args.grace, file.grace) {
        cfg.grace_period = v;
    }
    if let Some(v) = pick_dur(args.credential_cache_ttl, file.credential_cache_ttl) {
        cfg.credential_cache_ttl = v;
    }
    if let Some(v) = args.auth_threads.or(file.auth_threads) {
        cfg.auth_threads = v;
    }
    cfg.webhook = args.webhook.clone().or_else(|| file.webhook.clone());
    cfg.admin_listen = pick(args.admin_listen, file.admin_listen);
    cfg.admin_token = args
        .admin_token
        .clone()
        .or_else(|| file.admin_token.clone());
    cfg.accounting = !(args.no_accounting || file.no_accounting.unwrap_or(false));
    if let Some(v) = args.send_path.or(file.send_path) {
        cfg.send_path = v;
    }
    if let Some(classes) = &file.rate_classes {
        for (name, rate) in classes {
            cfg.rate_classes.insert(name.clone(), rate.0);
        }
    }
    for (name, rate) in &args.rate_class {
        cfg.rate_classes.insert(name.clone(), *rate);
    }

    ensure!(cfg.workers > 0, "--workers must be at least 1");
    ensure!(
        cfg.max_connections_per_worker > 0,
        "--max-connections must be at least 1"
    );
    ensure!(cfg.auth_threads > 0, "--auth-threads must be at least 1");
    ensure!(
        MIN_GRANT_RANGE.contains(&cfg.min_grant),
        "--min-grant must be 4KiB to 256KiB, not {} bytes",
        cfg.min_grant
    );
    for (name, d) in [
        ("--header-timeout", cfg.header_timeout),
        ("--idle-timeout", cfg.idle_timeout),
        ("--send-timeout", cfg.send_timeout),
    ] {
        ensure!(!d.is_zero(), "{name} must be greater than zero");
    }
    if let Some(url) = &cfg.webhook {
        ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--webhook must be an http:// or https:// URL, not {url:?}"
        );
    }
    Ok(cfg)
}

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

/// Runs parsed arguments, printing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    let open = |data_dir: Option<PathBuf>| -> anyhow::Result<Store> {
        let dir = data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Store::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))
    };
    match cli.command {
        Command::User(cmd) => user(&open(data_dir)?, cmd, out),
        Command::Item(ItemCommand::Add { id, file }) => {
            add_item(&open(data_dir)?, &id, ItemKind::File, &[file], out)
        }
        Command::Item(ItemCommand::List { json }) => list_items(&open(data_dir)?, json, out),
        Command::Album(AlbumCommand::Add { id, tracks }) => {
            add_item(&open(data_dir)?, &id, ItemKind::Album, &tracks, out)
        }
        Command::Cart(cmd) => cart(&open(data_dir)?, cmd, out),
        Command::History { user, json } => {
            let store = open(data_dir)?;
            for e in store.history_list(&user)? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(out, "{}\t{}", e.item, format_ms(e.completed_at_ms))?;
                }
            }
            Ok(())
        }
        Command::Token(args) => mint_link(&open(data_dir)?, &args, out),
        Command::Serve(args) => serve(data_dir, &args),
    }
}

fn read_password(src: &PasswordSource) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    if src.password_stdin {
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
    } else if let Some(path) = &src.password_file {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the password from {}", path.display()))?;
        line = text.lines().next().unwrap_or("").to_owned();
    } else {
        return Ok(None);
    }
    let pw = line.trim_end_matches(['\n', '\r']);
    ensure!(!pw.is_empty(), "the password is empty");
    Ok(Some(pw.to_owned()))
}

fn user(store: &Store, cmd: UserCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            password,
            rate,
        } => {
            if !valid_id(&name) {
                return Err(crate::store::StoreError::InvalidId(name).into());
            }
            if store.user(&name)?.is_some() {
                return Err(crate::store::StoreError::UserExists(name).into());
            }
            let Some(pw) = read_password(&password)? else {
                bail!("give the password with --password-stdin or --password-file FILE");
            };
            let hash = password::hash_password(&pw)?;
            store.add_user(&name, &hash, rate)?;
            writeln!(out, "added user {name}")?;
        }
        UserCommand::Set {
            name,
            rate,
            password,
        } => {
            let pw = read_password(&password)?;
            if rate.is_none() && pw.is_none() {
                bail!("nothing to change: give --rate, --password-stdin or --password-file");
            }
            if store.user(&name)?.is_none() {
                return Err(crate::store::StoreError::UnknownUser(name).into());
            }
            if let Some(pw) = pw {
                store.set_user_password(&name, &password::hash_password(&pw)?)?;
            }
            if let Some(rate) = rate {
                store.set_user_rate(&name, rate.into_option())?;
            }
            writeln!(out, "updated user {name}")?;
        }
        UserCommand::List { json } => {
            for u in store.users()? {
                let rate = u.rate.map(|r| r.to_string());
                if json {
                    let v = serde_json::json!({ "name": u.name, "rate": rate });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{}\t{}", u.name, rate.as_deref().unwrap_or("default"))?;
                }
            }
        }
    }
    Ok(())
}

fn add_item(
    store: &Store,
    id: &str,
    kind: ItemKind,
    files: &[PathBuf],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Refuse early rather than after copying gigabytes.
    if !valid_id(id) {
        return Err(crate::store::StoreError::InvalidId(id.to_owned()).into());
    }
    if store.item(id)?.is_some() {
        return Err(crate::store::StoreError::ItemExists(id.to_owned()).into());
    }
    let content = store.content_dir();
    let parts = files
        .iter()
        .map(|f| catalog::import_file(&content, f))
        .collect::<Result<Vec<_>, _>>()?;
    store.add_item(id, kind, &parts)?;
    let size: u64 = parts.iter().map(|p| p.size).sum();
    writeln!(
        out,
        "added {} {id}: {} part(s), {size} bytes",
        kind.as_str(),
        parts.len()
    )?;
    Ok(())
}

fn list_items(store: &Store, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    for item in store.items()? {
        if json {
            let parts: Vec<_> = item
                .parts
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name, "size": p.size, "sha256": p.sha256,
                        "crc32": p.crc32, "mtime": p.mtime,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "id": item.id, "kind": item.kind, "size": item.size(), "parts": parts,
            });
            writeln!(out, "{v}")?;
        } else {
            let names: Vec<_> = item.parts.iter().map(|p| p.name.as_str()).collect();
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                item.id,
                item.kind.as_str(),
                item.size(),
                names.join(", ")
            )?;
        }
    }
    Ok(())
}

fn cart(store: &Store, cmd: CartCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        CartCommand::Add { user, id } => {
            store.cart_add(&user, &id)?;
            writeln!(out, "{id} is in {user}'s cart")?;
        }
        CartCommand::Remove { user, id } => {
            if !store.cart_remove(&user, &id)? {
                bail!("{id:?} is not in {user:?}'s cart");
            }
            writeln!(out, "removed {id} from {user}'s cart")?;
        }
        CartCommand::List { user, json } => {
            for e in store.cart_list(&user)? {
                let delivered = store.delivered_bytes(&user, &e.item)?;
                let size = store.item(&e.item)?.map(|i| i.size()).unwrap_or(0);
                if json {
                    let line = serde_json::json!({
                        "item": e.item,
                        "added_at_ms": e.added_at_ms,
                        "delivered_bytes": delivered,
                        "size_bytes": size,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{delivered}/{size} bytes delivered",
                        e.item,
                        format_ms(e.added_at_ms)
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn format_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn mint_link(store: &Store, args: &TokenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for (what, v) in [("--user", &args.user), ("--item", &args.item)] {
        ensure!(
            token::valid_field(v),
            "{what} {v:?}: use 1-128 of A-Z a-z 0-9 . _ @ -"
        );
    }
    if let Some(r) = &args.rate_class {
        ensure!(
            token::valid_field(r),
            "--rate-class {r:?}: use 1-128 of A-Z a-z 0-9 . _ @ -"
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let claims = token::LinkClaims {
        user: args.user.clone(),
        item: args.item.clone(),
        expires: now.saturating_add(args.ttl.as_secs().max(1)),
        rate_class: args.rate_class.clone(),
    };
    let query = token::mint(&store.secret()?, &claims);
    let base = args.base_url.as_deref().unwrap_or("").trim_end_matches('/');
    writeln!(out, "{base}/d/{}?{query}", args.item)?;
    Ok(())
}

fn serve(data_dir: Option<PathBuf>, args: &ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = data_dir
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let mut cfg = serve_config(args, &file, data_dir.clone())?;

    // A data directory that does not exist yet, or exists but holds no database (an empty temp
    // dir), is a fresh machine: it gets the demo catalog.
    let existed = data_dir.join("weir.db").exists();
    let store = Store::open(&data_dir)
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    cfg.data_dir = store.data_dir().to_owned();
    let demo = if !existed || store.data_dir().join(demo::CREDENTIALS_FILE).exists() {
        demo::ensure_demo(&store).context("setting up the demo catalog")?
    } else {
        None
    };
    if cfg.admin_listen.is_some() && cfg.admin_token.is_none() {
        cfg.admin_token = Some(store.admin_token()?);
    }
    drop(store);
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        listen = %cfg.listen,
        workers = cfg.workers,
        demo = demo.is_some(),
        "starting"
    );
    crate::server::run(cfg, demo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weir").chain(args.iter().copied()))
    }

    /// Runs a command line against `dir` and returns what it printed.
    fn run_in(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--data-dir", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        let cli = parse(&full)?;
        let mut out = Vec::new();
        run(cli, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

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
    fn serve_defaults_are_the_config_defaults() {
        let cfg = serve_config(&serve_args(&[]), &FileConfig::default(), "d".into()).unwrap();
        let def = ServeConfig::new("d".into());
        assert_eq!(format!("{cfg:?}"), format!("{def:?}"));
    }

    #[test]
    fn serve_flags() {
        let args = serve_args(&[
            "--listen",
            "0.0.0.0:9000",
            "--workers",
            "3",
            "--driver",
            "epoll",
            "--uring-features",
            "minimal",
            "--max-connections",
            "100",
            "--header-timeout",
            "2s",
            "--idle-timeout",
            "500ms",
            "--send-timeout",
            "1m",
            "--drain-timeout",
            "5s",
            "--global-rate",
            "80Mbit",
            "--default-rate",
            "2MiB",
            "--min-grant",
            "64KiB",
            "--grace",
            "1h",
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--admin-listen",
            "127.0.0.1:9001",
            "--admin-token",
            "t0k",
            "--no-accounting",
        ]);
        let cfg = serve_config(&args, &FileConfig::default(), "d".into()).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(cfg.workers, 3);
        assert_eq!(cfg.driver, DriverChoice::Epoll);
        assert_eq!(cfg.uring_features, UringFeatures::Minimal);
        assert_eq!(cfg.max_connections_per_worker, 100);
        assert_eq!(cfg.header_timeout, Duration::from_secs(2));
        assert_eq!(cfg.idle_timeout, Duration::from_millis(500));
        assert_eq!(cfg.send_timeout, Duration::from_secs(60));
        assert_eq!(cfg.drain_timeout, Duration::from_secs(5));
        assert_eq!(cfg.global_rate, Rate::BytesPerSec(10_000_000));
        assert_eq!(cfg.default_user_rate, Rate::BytesPerSec(2 << 20));
        assert_eq!(cfg.min_grant, 64 << 10);
        assert_eq!(cfg.grace_period, Duration::from_secs(3600));
        assert_eq!(cfg.webhook.as_deref(), Some("http://127.0.0.1:9/hook"));
        assert_eq!(cfg.admin_listen, Some("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(cfg.admin_token.as_deref(), Some("t0k"));
        assert!(!cfg.accounting);
    }

    #[test]
    fn bad_serve_values_are_refused() {
        assert!(parse(&["serve", "--global-rate", "fast"]).is_err());
        assert!(parse(&["serve", "--header-timeout", "soon"]).is_err());
        assert!(parse(&["serve", "--driver", "kqueue"]).is_err());
        assert!(parse(&["serve", "--listen", "localhost"]).is_err());
        let zero = serve_args(&["--workers", "0"]);
        assert!(serve_config(&zero, &FileConfig::default(), "d".into()).is_err());
        let hook = serve_args(&["--webhook", "ftp://x"]);
        assert!(serve_config(&hook, &FileConfig::default(), "d".into()).is_err());
        for size in ["unlimited", "80Mbit", "fast", "0"] {
            assert!(parse(&["serve", "--min-grant", size]).is_err(), "{size}");
        }
        for size in ["1KiB", "1MiB"] {
            let out_of_range = serve_args(&["--min-grant", size]);
            let err = serve_config(&out_of_range, &FileConfig::default(), "d".into()).unwrap_err();
            assert!(err.to_string().contains("4KiB to 256KiB"), "{err}");
        }
    }

    #[test]
    fn min_grant_range_fits_the_shaper() {
        let max = weir_shaper::ShaperConfig::default().max_grant_bytes;
        assert!(*MIN_GRANT_RANGE.end() <= max);
    }

    #[test]
    fn toml_fills_what_flags_leave_unset() {
        let file: FileConfig = toml::from_str(
            r#"
            data_dir = "/srv/weir"
            listen = "127.0.0.1:7000"
            workers = 2
            driver = "uring"
            global_rate = "4MiB"
            header_timeout = "3s"
            grace = "30m"
            min_grant = "16KiB"
            no_accounting = true
            "#,
        )
        .unwrap();
        let args = serve_args(&["--workers", "5", "--global-rate", "unlimited"]);
        let cfg = serve_config(&args, &file, "d".into()).unwrap();
        assert_eq!(cfg.workers, 5, "flag beats file");
        assert_eq!(cfg.global_rate, Rate::Unlimited, "flag beats file");
        assert_eq!(cfg.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(cfg.driver, DriverChoice::Uring);
        assert_eq!(cfg.header_timeout, Duration::from_secs(3));
        assert_eq!(cfg.grace_period, Duration::from_secs(1800));
        assert_eq!(cfg.min_grant, 16 << 10);
        assert!(!cfg.accounting);
        assert_eq!(file.data_dir.as_deref(), Some(Path::new("/srv/weir")));

        assert!(
            toml::from_str::<FileConfig>("listn = \"x\"").is_err(),
            "typos are errors"
        );
        assert!(toml::from_str::<FileConfig>("global_rate = \"fast\"").is_err());
        assert!(toml::from_str::<FileConfig>("idle_timeout = \"soon\"").is_err());
    }

    #[test]
    fn user_commands_parse() {
        assert!(parse(&["user", "add", "alice", "--password-stdin"]).is_ok());
        assert!(parse(&[
            "user",
            "add",
            "alice",
            "--password-file",
            "f",
            "--rate",
            "2MiB"
        ])
        .is_ok());
        assert!(
            parse(&[
                "user",
                "add",
                "a",
                "--password-stdin",
                "--password-file",
                "f"
            ])
            .is_err(),
            "one password source"
        );
        match parse(&["user", "set", "alice", "--rate", "default"])
            .unwrap()
            .command
        {
            Command::User(UserCommand::Set { rate, .. }) => {
                assert_eq!(rate, Some(RateSetting::Default))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["user", "set", "alice", "--rate", "unlimited"])
            .unwrap()
            .command
        {
            Command::User(UserCommand::Set { rate, .. }) => {
                assert_eq!(rate, Some(RateSetting::Rate(Rate::Unlimited)))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["album", "add", "x"]).is_err(),
            "an album needs tracks"
        );
        // --data-dir is accepted after the subcommand too.
        let cli = parse(&["cart", "list", "bob", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(cli.data_dir.as_deref(), Some(Path::new("/tmp/x")));
    }

    #[test]
    fn end_to_end_in_process() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pw = tmp.path().join("pw");
        fs::write(&pw, "hunter22\n").unwrap();
        let song = |n: &str, body: &[u8]| {
            let p = tmp.path().join(n);
            fs::write(&p, body).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let (f, t1, t2) = (
            song("f.bin", b"file"),
            song("a.flac", b"aa"),
            song("b.flac", b"b"),
        );
        let pwf = pw.to_str().unwrap();

        run_in(
            &dir,
            &[
                "user",
                "add",
                "alice",
                "--password-file",
                pwf,
                "--rate",
                "2MiB",
            ],
        )
        .unwrap();
        let dup = run_in(&dir, &["user", "add", "alice", "--password-file", pwf]);
        assert!(format!("{:#}", dup.unwrap_err()).contains("already exists"));
        assert!(
            run_in(&dir, &["user", "add", "bob"]).is_err(),
            "needs a password"
        );
        run_in(&dir, &["user", "set", "alice", "--rate", "default"]).unwrap();
        assert!(
            run_in(&dir, &["user", "set", "alice"]).is_err(),
            "nothing to change"
        );
        assert!(run_in(&dir, &["user", "set", "nobody", "--rate", "1MiB"]).is_err());
        let users = run_in(&dir, &["user", "list", "--json"]).unwrap();
        let u: serde_json::Value = serde_json::from_str(users.trim()).unwrap();
        assert_eq!(u["name"], "alice");
        assert!(u["rate"].is_null());
        let store = Store::open(&dir).unwrap();
        let hash = store.user("alice").unwrap().unwrap().password_hash;
        assert!(password::verify_password("hunter22", &hash));

        run_in(&dir, &["item", "add", "file1", &f]).unwrap();
        run_in(&dir, &["album", "add", "alb", &t2, &t1]).unwrap();
        assert!(run_in(&dir, &["item", "add", "file1", &f]).is_err());
        let items = run_in(&dir, &["item", "list", "--json"]).unwrap();
        let lines: Vec<serde_json::Value> = items
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], "alb");
        assert_eq!(lines[0]["kind"], "album");
        assert_eq!(lines[0]["parts"][0]["name"], "b.flac");
        assert_eq!(lines[1]["size"], 4);

        run_in(&dir, &["cart", "add", "alice", "alb"]).unwrap();
        let e = run_in(&dir, &["cart", "add", "nobody", "alb"]).unwrap_err();
        assert!(format!("{e:#}").contains("no such user"), "{e:#}");
        let e = run_in(&dir, &["cart", "add", "alice", "nothing"]).unwrap_err();
        assert!(format!("{e:#}").contains("no such item"), "{e:#}");
        let cart = run_in(&dir, &["cart", "list", "alice", "--json"]).unwrap();
        let entry: serde_json::Value = serde_json::from_str(cart.trim()).unwrap();
        assert_eq!(entry["item"], "alb");
        assert!(entry["added_at_ms"].as_u64().unwrap() > 0);
        assert!(run_in(&dir, &["cart", "list", "nobody"]).is_err());
        run_in(&dir, &["cart", "remove", "alice", "alb"]).unwrap();
        assert!(run_in(&dir, &["cart", "remove", "alice", "alb"]).is_err());
        assert_eq!(run_in(&dir, &["cart", "list", "alice"]).unwrap(), "");
        assert_eq!(run_in(&dir, &["history", "alice", "--json"]).unwrap(), "");

        let link = run_in(
            &dir,
            &[
                "token",
                "--user",
                "alice",
                "--item",
                "alb",
                "--ttl",
                "10m",
                "--base-url",
                "http://127.0.0.1:8080/",
            ],
        )
        .unwrap();
        let link = link.trim();
        let query = link
            .strip_prefix("http://127.0.0.1:8080/d/alb?")
            .unwrap_or_else(|| panic!("{link}"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = token::verify(&store.secret().unwrap(), "alb", query, now).unwrap();
        assert_eq!(claims.user, "alice");
        assert!(claims.expires >= now + 590 && claims.expires <= now + 610);
        assert!(run_in(&dir, &["token", "--user", "a b", "--item", "alb"]).is_err());
    }
}
