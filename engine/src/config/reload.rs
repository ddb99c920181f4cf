//! SIGHUP: re-reading the `--config` TOML file with the same flags and `WEIR_*` variables as at
//! start, and deciding what of the result can change in a running server. This module owns the
//! refusal message (file, line, reason) and the list of changes; the server's signal thread
//! applies the live ones.

use std::sync::OnceLock;

use super::{resolve, ReloadSource, ServeConfig, Settings};

impl ReloadSource {
    /// Reads the file again and resolves it under the same flags. The error is one line:
    /// `FILE:LINE: reason` for a syntax or value error, `FILE: reason` for a check that spans
    /// the whole configuration.
    pub fn read(&self) -> Result<ServeConfig, String> {
        let name = self.file.display();
        let text = std::fs::read_to_string(&self.file).map_err(|e| format!("{name}: {e}"))?;
        let file =
            Settings::from_toml(&text).map_err(|e| toml_error(&name.to_string(), &text, &e))?;
        resolve(&self.flags, &file).map_err(|e| format!("{name}: {e:#}"))
    }
}

/// `FILE:LINE: reason` from a TOML error (its span is a byte range of the text).
fn toml_error(name: &str, text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            format!("{name}:{line}: {reason}")
        }
        None => format!("{name}: {reason}"),
    }
}

/// What a reload would change: settings the running server takes at once, and settings that
/// differ but only take effect after a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `name old -> new` for each live setting that changed.
    pub live: Vec<String>,
    /// Names of the settings that differ but need a restart.
    pub restart: Vec<&'static str>,
}

impl Changes {
    /// The info line's text: what changed, and what waits for a restart.
    pub fn describe(&self) -> String {
        let live = if self.live.is_empty() {
            "nothing changed".to_string()
        } else {
            self.live.join(", ")
        };
        if self.restart.is_empty() {
            live
        } else {
            format!("{live}; needs a restart: {}", self.restart.join(", "))
        }
    }
}

/// Compares the running configuration with a freshly read one.
pub fn diff(old: &ServeConfig, new: &ServeConfig) -> Changes {
    let mut c = Changes::default();
    if old.global_rate != new.global_rate {
        c.live.push(format!(
            "global_rate {} -> {}",
            old.global_rate, new.global_rate
        ));
    }
    if old.log_level != new.log_level {
        c.live
            .push(format!("log_level {} -> {}", old.log_level, new.log_level));
    }
    if old.default_user_rate != new.default_user_rate {
        c.live.push(format!(
            "default_rate {} -> {}",
            old.default_user_rate, new.default_user_rate
        ));
    }
    if old.rate_classes != new.rate_classes {
        let mut names: Vec<_> = new.rate_classes.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        let list: Vec<String> = names.iter().map(|(n, r)| format!("{n}={r}")).collect();
        c.live.push(format!("rate_classes [{}]", list.join(" ")));
    }
    match (&old.webhook, &new.webhook) {
        (Some(a), Some(b)) if a != b => c.live.push(format!("webhook {a} -> {b}")),
        (a, b) if a != b => c.restart.push("webhook"),
        _ => {}
    }
    let restart: [(&'static str, bool); 14] = [
        ("data_dir", !same_dir(&old.data_dir, &new.data_dir)),
        ("listen", old.listen != new.listen),
        ("tls", old.tls != new.tls),
        ("workers", old.workers != new.workers),
        ("driver", old.driver != new.driver),
        ("uring_features", old.uring_features != new.uring_features),
        (
            "max_connections",
            old.max_connections_per_worker != new.max_connections_per_worker,
        ),
        ("auth_threads", old.auth_threads != new.auth_threads),
        ("min_grant", old.min_grant != new.min_grant),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("send_path", old.send_path != new.send_path),
        ("access_log", old.access_log != new.access_log),
        ("log_format", old.log_format != new.log_format),
        ("no_accounting", old.accounting != new.accounting),
    ];
    c.restart
        .extend(restart.iter().filter(|(_, d)| *d).map(|(n, _)| *n));
    c
}

/// The running data directory is the store's canonical path; the file names it as written.
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    canon(a) == canon(b)
}

type LogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

/// Installed once by the logging set-up: how to replace the log filter of the running process.
pub fn install_log_filter(f: LogFilter) {
    let _ = LOG_FILTER.set(f);
}

/// Sets the log filter (tracing-subscriber's EnvFilter syntax). `WEIR_LOG`, when set, wins like
/// a flag: then the file's `log_level` is left alone.
pub fn apply_log_level(level: &str) -> Result<(), String> {
    if std::env::var_os("WEIR_LOG").is_some() {
        return Ok(());
    }
    match LOG_FILTER.get() {
        Some(f) => f(level),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_shaper::Rate;

    fn cfg(toml: &str) -> ServeConfig {
        resolve(&Settings::default(), &Settings::from_toml(toml).unwrap()).unwrap()
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let old = cfg("global_rate = \"1MiB\"\nworkers = 2\n");
        let new = cfg("global_rate = \"2MiB\"\nworkers = 4\nlog_level = \"debug\"\nlisten = \"127.0.0.1:9\"\n");
        let hook = |u: &str| cfg(&format!("webhook = \"{u}\"\n"));
        let (a, b) = (hook("http://a/x"), hook("http://b/y"));
        assert_eq!(diff(&a, &b).live, vec!["webhook http://a/x -> http://b/y"]);
        assert_eq!(diff(&old, &a).restart, vec!["webhook"]);
        let rates = cfg("global_rate = \"1MiB\"\nworkers = 2\ndefault_rate = \"1MiB\"\n[rate_classes]\nsd = \"1MiB\"\nhd = \"4MiB\"\n");
        let c = diff(&old, &rates);
        assert_eq!(c.live[1], "rate_classes [hd=4MiB sd=1MiB]", "{c:?}");
        assert!(c.live[0].starts_with("default_rate unlimited -> "), "{c:?}");
        assert_eq!(c.live.len(), 2, "{c:?}");
        assert!(c.restart.is_empty(), "{c:?}");
        let c = diff(&old, &new);
        assert_eq!(c.live.len(), 2, "{c:?}");
        assert!(c.live[0].starts_with("global_rate "), "{c:?}");
        assert!(c.live[1].contains("info -> debug"), "{c:?}");
        assert_eq!(c.restart, vec!["listen", "workers"]);
        assert!(c.describe().contains("needs a restart: listen, workers"));
        assert_eq!(diff(&old, &old).describe(), "nothing changed");
        assert_eq!(new.global_rate, Rate::BytesPerSec(2 << 20));
    }

    #[test]
    fn a_bad_file_names_its_line_and_the_reason() {
        let dir = std::env::temp_dir().join(format!("weir-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        let src = ReloadSource {
            flags: Settings::default(),
            file: file.clone(),
        };
        std::fs::write(&file, "workers = 2\n\nglobal_rate = \"fast\"\n").unwrap();
        let err = src.read().unwrap_err();
        assert!(err.starts_with(&format!("{}:3: ", file.display())), "{err}");
        assert!(!err.contains('\n'), "{err}");
        std::fs::write(&file, "workers = 2\nno_such_key = 1\n").unwrap();
        let err = src.read().unwrap_err();
        assert!(err.starts_with(&format!("{}:2: ", file.display())), "{err}");
        // A check over the whole configuration: the file and the reason.
        std::fs::write(&file, "workers = 0\n").unwrap();
        let err = src.read().unwrap_err();
        assert!(err.contains("--workers must be at least 1"), "{err}");
        // Flags still win over the file.
        std::fs::write(&file, "global_rate = \"1MiB\"\n").unwrap();
        let flags = ReloadSource {
            flags: Settings {
                global_rate: Some(Rate::BytesPerSec(5 << 20)),
                ..Settings::default()
            },
            file: file.clone(),
        };
        assert_eq!(
            flags.read().unwrap().global_rate,
            Rate::BytesPerSec(5 << 20)
        );
        assert_eq!(src.read().unwrap().global_rate, Rate::BytesPerSec(1 << 20));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
