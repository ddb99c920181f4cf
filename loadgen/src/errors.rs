//! Error kinds: every way a request or a download can go wrong, counted by kind, never stored
//! one by one.
//!
//! A kind names the condition (what a person running the test acts on), not the syscall. The
//! counters are per worker atomics so the progress line can read them while the run goes on; the
//! summary turns them into a `{"kind": count}` map with only the kinds that happened.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! kinds {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// One way a connection, a request or a download failed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorKind {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorKind {
            /// Every kind, in declaration order (the index of a kind is its position here).
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The stable snake_case name used in summary.json and on the progress line.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $name,)*
                }
            }

            /// The kind with this name, as written by [`ErrorKind::name`].
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name {
                    $($name => Some(ErrorKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    Dns => "dns", "The target host name did not resolve.";
    ConnectRefused => "connect_refused", "Nobody listens there (ECONNREFUSED).";
    ConnectTimeout => "connect_timeout", "The TCP handshake did not finish within the stall timeout.";
    Unreachable => "unreachable", "No route to the target (ENETUNREACH, EHOSTUNREACH).";
    AddrInUse => "addr_in_use", "No local port or source address left (EADDRINUSE, EADDRNOTAVAIL).";
    TooManyFiles => "too_many_files", "The process ran out of file descriptors (EMFILE, ENFILE).";
    Connect => "connect", "Any other failure to connect.";
    TlsCertificate => "tls_certificate", "The server's certificate is not trusted (--cacert, --insecure) or not for this host.";
    Tls => "tls", "Any other TLS failure: an alert, a bad record, no common cipher suite, closed during the handshake.";
    Reset => "reset", "The peer reset the connection (ECONNRESET, EPIPE).";
    Io => "io", "Any other read or write error.";
    ClosedBeforeResponse => "closed_before_response", "The connection closed before a response head arrived.";
    BodyShort => "body_short", "The body ended before its Content-Length.";
    Stall => "stall", "No byte arrived for the stall timeout; the connection was dropped.";
    BadResponse => "bad_response", "The response head or chunked framing could not be parsed.";
    RangeIgnored => "range_ignored", "A 200 answered a Range request (the server ignores ranges).";
    RangeMismatch => "range_mismatch", "Content-Range or Content-Length differs from what was asked.";
    RangeNotSatisfiable => "range_not_satisfiable", "A 416 answered a Range request.";
    Unauthorized => "http_401", "401: missing or wrong credentials.";
    Forbidden => "http_403", "403: not allowed.";
    NotFound => "http_404", "404: no such file.";
    Http4xx => "http_4xx", "Any other 4xx status.";
    ServiceUnavailable => "http_503", "503: the server refused because of a cap.";
    Http5xx => "http_5xx", "Any other 5xx status.";
    HttpOther => "http_other", "A 1xx/3xx or otherwise unexpected status.";
    HashMismatch => "hash_mismatch", "The assembled bytes differ from --sha256.";
    GaveUp => "gave_up", "A download was given up: its failures outlasted --retry-for.";
}

impl ErrorKind {
    /// How many kinds there are.
    pub const COUNT: usize = Self::ALL.len();

    /// The kind for an unexpected HTTP status.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            416 => ErrorKind::RangeNotSatisfiable,
            503 => ErrorKind::ServiceUnavailable,
            400..=499 => ErrorKind::Http4xx,
            500..=599 => ErrorKind::Http5xx,
            _ => ErrorKind::HttpOther,
        }
    }

    /// The kind for a failed `connect`.
    pub fn from_connect_error(err: &io::Error) -> ErrorKind {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => ErrorKind::ConnectRefused,
            Some(libc::ETIMEDOUT) => ErrorKind::ConnectTimeout,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EHOSTDOWN) => {
                ErrorKind::Unreachable
            }
            Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL) => ErrorKind::AddrInUse,
            Some(libc::EMFILE | libc::ENFILE) => ErrorKind::TooManyFiles,
            Some(libc::ECONNRESET) => ErrorKind::Reset,
            _ => ErrorKind::Connect,
        }
    }

    /// The kind for a failed read or write on an established connection.
    pub fn from_io_error(err: &io::Error) -> ErrorKind {
        match err.raw_os_error() {
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => ErrorKind::Reset,
            Some(libc::ETIMEDOUT) => ErrorKind::Stall,
            Some(libc::EMFILE | libc::ENFILE) => ErrorKind::TooManyFiles,
            _ => ErrorKind::Io,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters for every kind. Updated by one worker, read by anyone (progress line).
pub struct ErrorCounters {
    counts: [AtomicU64; ErrorKind::COUNT],
}

impl Default for ErrorCounters {
    fn default() -> Self {
        ErrorCounters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ErrorCounters {
    /// Count one error of `kind`.
    pub fn add(&self, kind: ErrorKind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many of `kind` so far.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Add these counts into `into`.
    pub fn accumulate(&self, into: &mut ErrorCounts) {
        for &kind in ErrorKind::ALL {
            let n = self.get(kind);
            if n > 0 {
                *into.0.entry(kind.name().to_string()).or_insert(0) += n;
            }
        }
    }
}

/// A snapshot of error counts by kind name, only the kinds that happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ErrorCounts(pub BTreeMap<String, u64>);

impl ErrorCounts {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0.get(kind.name()).copied().unwrap_or(0)
    }

    /// Add another snapshot into this one.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// `kind=count` pairs, most frequent first, for the progress line.
    pub fn short(&self) -> String {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            assert!(seen.insert(k.name()));
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
            assert_eq!(ErrorKind::ALL[k.index()], k);
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(ErrorKind::from_status(416), ErrorKind::RangeNotSatisfiable);
        assert_eq!(ErrorKind::from_status(401), ErrorKind::Unauthorized);
        assert_eq!(ErrorKind::from_status(418), ErrorKind::Http4xx);
        assert_eq!(ErrorKind::from_status(502), ErrorKind::Http5xx);
        assert_eq!(ErrorKind::from_status(302), ErrorKind::HttpOther);
    }

    #[test]
    fn counters_snapshot_only_nonzero() {
        let c = ErrorCounters::default();
        c.add(ErrorKind::Stall);
        c.add(ErrorKind::Stall);
        c.add(ErrorKind::Reset);
        let mut s = ErrorCounts::default();
        c.accumulate(&mut s);
        assert_eq!(s.total(), 3);
        assert_eq!(s.get(ErrorKind::Stall), 2);
        assert_eq!(s.0.len(), 2);
        assert_eq!(s.short(), "stall=2 reset=1");
    }
}
