//! Every `weir serve` default, written once, the way a user writes the value: `weir serve --help`
//! shows these strings, the README's tables quote them (a test below compares), and
//! [`ServeConfig::new`](super::ServeConfig::new) parses them with the parsers the flags use.

/// The data directory when neither `--data-dir`, `WEIR_DATA_DIR` nor the TOML file names one.
pub const DATA_DIR: &str = "./weir-data";
/// `off` turns plain HTTP off (then `--tls-listen` is required).
pub const LISTEN: &str = "127.0.0.1:8080";
/// Not a value: the default is counted at start (`available_parallelism`).
pub const WORKERS: &str = "number of CPUs";
pub const DRIVER: &str = "auto";
pub const URING_FEATURES: &str = "full";
pub const MAX_CONNECTIONS: &str = "16384";
pub const HEADER_TIMEOUT: &str = "10s";
pub const IDLE_TIMEOUT: &str = "60s";
pub const SEND_TIMEOUT: &str = "60s";
pub const DRAIN_TIMEOUT: &str = "30s";
pub const CREDENTIAL_CACHE_TTL: &str = "60s";
pub const AUTH_THREADS: &str = "2";
pub const GLOBAL_RATE: &str = "unlimited";
pub const DEFAULT_RATE: &str = "unlimited";
/// The smallest send of a shaped connection (`--min-grant`): 32 KiB cost 18–26% less server
/// CPU per GiB than 16 KiB in a paired A/B (results/2026-11-23-shaping-grant), at the same
/// accuracy and stalled-socket memory.
pub const MIN_GRANT: &str = "32KiB";
pub const GRACE: &str = "10m";
pub const SEND_PATH: &str = "mmap";
pub const LOG_FORMAT: &str = "text";
/// The log filter when neither `WEIR_LOG` nor the file's `log_level` sets one.
pub const LOG_LEVEL: &str = "info";

/// Each flag's default as `--help` and the README show it, by the flag's long name. The settings
/// that are off unless given say so in words.
pub const SHOWN: &[(&str, &str)] = &[
    ("data-dir", DATA_DIR),
    ("listen", LISTEN),
    ("tls-listen", "off"),
    ("tls-cert", "none"),
    ("tls-key", "none"),
    ("workers", WORKERS),
    ("driver", DRIVER),
    ("uring-features", URING_FEATURES),
    ("max-connections", MAX_CONNECTIONS),
    ("header-timeout", HEADER_TIMEOUT),
    ("idle-timeout", IDLE_TIMEOUT),
    ("send-timeout", SEND_TIMEOUT),
    ("drain-timeout", DRAIN_TIMEOUT),
    ("credential-cache-ttl", CREDENTIAL_CACHE_TTL),
    ("auth-threads", AUTH_THREADS),
    ("global-rate", GLOBAL_RATE),
    ("default-rate", DEFAULT_RATE),
    ("min-grant", MIN_GRANT),
    ("grace", GRACE),
    ("send-path", SEND_PATH),
    ("rate-class", "none"),
    ("webhook", "off"),
    ("admin-listen", "off"),
    ("admin-token", "the one in DATA_DIR/admin-token"),
    ("access-log", "off"),
    ("log-format", LOG_FORMAT),
];

/// The default `--help` shows for the flag `--{long}`, if it has one.
pub fn shown(long: &str) -> Option<&'static str> {
    SHOWN
        .iter()
        .find(|(flag, _)| *flag == long)
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `| `--flag [ARG]` | default | meaning |` of the README section `heading`.
    fn readme_table(readme: &str, heading: &str) -> Vec<(String, String)> {
        let section = readme
            .split("\n#")
            .find(|s| s.trim_start_matches('#').trim_start().starts_with(heading))
            .unwrap_or_else(|| panic!("README has no section {heading:?}"));
        section
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let flag = cells.get(1)?.strip_prefix("`--")?;
                let flag = flag.split([' ', '`']).next()?;
                Some((flag.to_owned(), cells.get(2)?.to_string()))
            })
            .collect()
    }

    #[test]
    fn readme_limits_table_quotes_these_defaults() {
        let readme = include_str!("../../../README.md");
        let rows = readme_table(readme, "Limits and timeouts");
        assert!(rows.len() >= 10, "found only {rows:?}");
        for (flag, default) in &rows {
            let ours = shown(flag)
                .unwrap_or_else(|| panic!("README lists --{flag}, config has no default for it"));
            assert_eq!(default, ours, "README's default of --{flag}");
        }
    }

    #[test]
    fn every_default_value_parses() {
        // ServeConfig::new parses every value above; a typo here is a panic there.
        let cfg = super::super::ServeConfig::new("d".into());
        assert_eq!(cfg.min_grant, 32 * 1024);
        assert_eq!(cfg.idle_timeout, std::time::Duration::from_secs(60));
    }
}
