//! The `weir` command line's arguments: the clap definitions and the `--help` text. The flags here
//! only say what was given; what `weir serve` runs with (defaults, `WEIR_*` variables, the
//! `--config` TOML file, precedence) is decided by [`crate::config`].
//!
//! Each `[default: ...]` in `--help` is taken from [`crate::config::defaults`], the same values
//! the server starts with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Arg, Args, Parser, Subcommand};
use weir_shaper::Rate;

use crate::config::TlsSettings;
use crate::config::{defaults, parse_duration, parse_rate_class, Listen, Settings, Size};
use crate::config::{DriverChoice, LogFormat, SendPath, UringFeatures};

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
#[command(mut_args = show_default)]
pub struct Cli {
    /// Data directory: database, content store, link secret
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
    #[command(after_help = SERVE_AFTER_HELP, mut_args = show_default)]
    Serve(Box<ServeArgs>),
    /// Check this host for serving N connections: kernel, io_uring and the driver serve picks,
    /// RLIMIT_NOFILE, TCP sysctls; each with the recommended value and the command to set it
    CheckSystem(CheckSystemArgs),
}

/// `weir check-system` options.
#[derive(Debug, Args)]
pub struct CheckSystemArgs {
    /// Concurrent client connections to size the limits for
    #[arg(long, value_name = "N", default_value = "10000")]
    pub connections: u64,
    /// One JSON object: {"connections", "warnings", "checks": [{"name", "found",
    /// "recommended", "verdict", "set", "note"}]}
    #[arg(long)]
    pub json: bool,
    /// The serve --driver to judge
    #[arg(long, env = "WEIR_DRIVER", value_enum)]
    pub driver: Option<DriverChoice>,
    /// The serve --uring-features to judge
    #[arg(long, env = "WEIR_URING_FEATURES", value_enum)]
    pub uring_features: Option<UringFeatures>,
    /// The serve --config file to judge (its driver, uring_features, min_grant)
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
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
        /// Display name: the file name browsers save the download as (default: FILE's name)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List all items, files and albums
    List {
        /// One JSON object per line: {"id", "kind", "name", "size", "parts": [...]}
        #[arg(long)]
        json: bool,
    },
    /// Re-read the content store and check every part's size and SHA-256; prints `ID ok` or
    /// `ID bad ...` per item and exits 1 if any is bad
    Verify {
        /// Items to check (default: all items, albums included)
        ids: Vec<String>,
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
        /// Display name: the zip downloads as NAME.zip (default: ID.zip)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
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
    /// Address for plain-HTTP downloads, or `off`
    #[arg(long, env = "WEIR_LISTEN", value_name = "ADDR")]
    pub listen: Option<Listen>,
    /// Address for HTTPS downloads (weir terminates TLS itself)
    #[arg(long, env = "WEIR_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<Listen>,
    /// PEM certificate chain for --tls-listen, leaf first (e.g. certbot's fullchain.pem)
    #[arg(long, env = "WEIR_TLS_CERT", value_name = "FULLCHAIN.pem")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-listen (RSA or ECDSA); reloaded on SIGHUP
    #[arg(long, env = "WEIR_TLS_KEY", value_name = "KEY.pem")]
    pub tls_key: Option<PathBuf>,
    /// Worker threads, one io_uring/epoll loop each
    #[arg(long, env = "WEIR_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// I/O driver: io_uring when usable (auto), io_uring only, or epoll
    #[arg(long, env = "WEIR_DRIVER", value_enum)]
    pub driver: Option<DriverChoice>,
    /// io_uring features: all the kernel offers, or only 5.10's
    #[arg(long, env = "WEIR_URING_FEATURES", value_enum)]
    pub uring_features: Option<UringFeatures>,
    /// Open connections per worker before new ones get 503
    #[arg(long, env = "WEIR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time allowed to send a complete request head
    #[arg(long, env = "WEIR_HEADER_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Option<Duration>,
    /// Idle time allowed between keep-alive requests
    #[arg(long, env = "WEIR_IDLE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,
    /// Time a send may make no progress before the connection is closed
    #[arg(long, env = "WEIR_SEND_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub send_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight downloads may finish
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,
    /// Bandwidth cap for the whole host
    #[arg(long, env = "WEIR_GLOBAL_RATE", value_name = "RATE")]
    pub global_rate: Option<Rate>,
    /// Cap for users without a rate of their own
    #[arg(long, env = "WEIR_DEFAULT_RATE", value_name = "RATE")]
    pub default_rate: Option<Rate>,
    /// Smallest send of a shaped download, 4KiB to 256KiB: larger costs less CPU per byte,
    /// in bigger steps per connection
    #[arg(long, env = "WEIR_MIN_GRANT", value_name = "SIZE")]
    pub min_grant: Option<Size>,
    /// A rate class signed links may carry (r=NAME), e.g. `hd=4MiB`; repeatable
    #[arg(long = "rate-class", value_name = "NAME=RATE", value_parser = parse_rate_class)]
    pub rate_class: Vec<(String, Rate)>,
    /// How long a completed item stays downloadable
    #[arg(long, env = "WEIR_GRACE", value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// URL to POST completion events to
    #[arg(long, env = "WEIR_WEBHOOK", value_name = "URL")]
    pub webhook: Option<String>,
    /// Address of the admin listener (metrics, live rates, drain)
    #[arg(long, env = "WEIR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Admin bearer token
    #[arg(
        long,
        env = "WEIR_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Threads that verify passwords (as many again read carts and items)
    #[arg(long, env = "WEIR_AUTH_THREADS", value_name = "N")]
    pub auth_threads: Option<usize>,
    /// How long a verified password stays cached
    #[arg(long, env = "WEIR_CREDENTIAL_CACHE_TTL", value_parser = parse_duration, value_name = "DURATION")]
    pub credential_cache_ttl: Option<Duration>,
    /// Do not account delivered bytes (benchmarks only: nothing ever completes)
    #[arg(long, hide = true)]
    pub no_accounting: bool,
    /// How large bodies reach the socket: from the mapping (send) or with sendfile
    #[arg(long, env = "WEIR_SEND_PATH", value_enum)]
    pub send_path: Option<SendPath>,
    /// Access log: one line per response, to this file (`-`: standard output); reopened on SIGUSR1
    #[arg(long, env = "WEIR_ACCESS_LOG", value_name = "PATH")]
    pub access_log: Option<String>,
    /// Format of every log line and of the access log
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// TOML file with any of these settings (see below)
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
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
    pub fn into_option(self) -> Option<Rate> {
        match self {
            RateSetting::Default => None,
            RateSetting::Rate(r) => Some(r),
        }
    }
}

impl ServeArgs {
    /// What the flags (and their environment variables) set, for [`crate::config::resolve`].
    pub fn settings(&self, data_dir: Option<PathBuf>) -> Settings {
        Settings {
            data_dir,
            listen: self.listen,
            workers: self.workers,
            driver: self.driver,
            uring_features: self.uring_features,
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            drain_timeout: self.drain_timeout,
            global_rate: self.global_rate,
            default_rate: self.default_rate,
            min_grant: self.min_grant,
            rate_classes: self.rate_class.clone(),
            grace: self.grace,
            webhook: self.webhook.clone(),
            admin_listen: self.admin_listen,
            admin_token: self.admin_token.clone(),
            auth_threads: self.auth_threads,
            credential_cache_ttl: self.credential_cache_ttl,
            no_accounting: self.no_accounting.then_some(true),
            send_path: self.send_path,
            tls: TlsSettings {
                listen: self.tls_listen,
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            },
            access_log: self.access_log.clone(),
            log_format: self.log_format,
            log_level: None,
        }
    }
}

/// Appends `[default: ...]` from [`crate::config::defaults`] to the help of a flag that has one.
fn show_default(arg: Arg) -> Arg {
    let Some(value) = arg.get_long().and_then(defaults::shown) else {
        return arg;
    };
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    arg.help(format!("{help} [default: {value}]"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ServeConfig;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weir").chain(args.iter().copied()))
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// What the server would run with, given these flags and this TOML file.
    fn resolve(args: &ServeArgs, file: &Settings) -> anyhow::Result<ServeConfig> {
        crate::config::resolve(&args.settings(Some("d".into())), file)
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn help_shows_the_config_defaults() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let serve = cli.find_subcommand("serve").unwrap();
        for (flag, value) in defaults::SHOWN {
            let arg = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| {
                    panic!("config has a default for --{flag}, serve has no such flag")
                });
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.ends_with(&format!("[default: {value}]")),
                "--{flag}: {help}"
            );
            assert_eq!(help.matches("[default:").count(), 1, "--{flag}: {help}");
        }
    }

    #[test]
    fn serve_defaults_are_the_config_defaults() {
        let cfg = resolve(&serve_args(&[]), &Settings::default()).unwrap();
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
        let cfg = resolve(&args, &Settings::default()).unwrap();
        assert_eq!(cfg.listen, Some("0.0.0.0:9000".parse().unwrap()));
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
    fn tls_flags() {
        let args = serve_args(&[
            "--listen",
            "off",
            "--tls-listen",
            "0.0.0.0:8443",
            "--tls-cert",
            "/etc/letsencrypt/live/x/fullchain.pem",
            "--tls-key",
            "/etc/letsencrypt/live/x/privkey.pem",
        ]);
        let cfg = resolve(&args, &Settings::default()).unwrap();
        assert_eq!(cfg.listen, None);
        let tls = cfg.tls.unwrap();
        assert_eq!(tls.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(tls.key, Path::new("/etc/letsencrypt/live/x/privkey.pem"));
        assert!(parse(&["serve", "--tls-listen", "localhost"]).is_err());
    }

    #[test]
    fn bad_serve_values_are_refused() {
        assert!(parse(&["serve", "--global-rate", "fast"]).is_err());
        assert!(parse(&["serve", "--header-timeout", "soon"]).is_err());
        assert!(parse(&["serve", "--driver", "kqueue"]).is_err());
        assert!(parse(&["serve", "--listen", "localhost"]).is_err());
        let zero = serve_args(&["--workers", "0"]);
        assert!(resolve(&zero, &Settings::default()).is_err());
        let hook = serve_args(&["--webhook", "ftp://x"]);
        assert!(resolve(&hook, &Settings::default()).is_err());
        for size in ["unlimited", "80Mbit", "fast", "0"] {
            assert!(parse(&["serve", "--min-grant", size]).is_err(), "{size}");
        }
        for size in ["1KiB", "1MiB"] {
            let out_of_range = serve_args(&["--min-grant", size]);
            let err = resolve(&out_of_range, &Settings::default()).unwrap_err();
            assert!(err.to_string().contains("4KiB to 256KiB"), "{err}");
        }
    }

    #[test]
    fn toml_fills_what_flags_leave_unset() {
        let file = Settings::from_toml(
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
        let cfg = resolve(&args, &file).unwrap();
        assert_eq!(cfg.workers, 5, "flag beats file");
        assert_eq!(cfg.global_rate, Rate::Unlimited, "flag beats file");
        assert_eq!(cfg.listen, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(cfg.driver, DriverChoice::Uring);
        assert_eq!(cfg.header_timeout, Duration::from_secs(3));
        assert_eq!(cfg.grace_period, Duration::from_secs(1800));
        assert_eq!(cfg.min_grant, 16 << 10);
        assert!(!cfg.accounting);
        assert_eq!(file.data_dir.as_deref(), Some(Path::new("/srv/weir")));

        assert!(
            Settings::from_toml("listn = \"x\"").is_err(),
            "typos are errors"
        );
        assert!(Settings::from_toml("global_rate = \"fast\"").is_err());
        assert!(Settings::from_toml("idle_timeout = \"soon\"").is_err());
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
}
