//! What a harness that counts completions needs from `forty` (the chaos bench): a record of every
//! download a user finished ([`DownloadLog`], `--events`), and a gate that holds each user's next
//! download until the harness says the next purchase exists ([`Gate`], `--gate`).
//!
//! A user's downloads are numbered 0, 1, 2, ... in the order it starts them; download `n` of
//! global user `u` is the pair a harness matches with its `n`-th purchase for that user.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One finished download: every byte of the file arrived at the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRecord {
    /// Global user index (the line of `--credentials-file` it used, round robin).
    pub user: usize,
    /// The user's download number, from 0.
    pub download: u64,
    /// The file size the download assembled.
    pub bytes: u64,
    /// With `--sha256`: whether every block matched; `None` without verification.
    pub verified: Option<bool>,
    /// From the probe to the last byte, in milliseconds.
    pub took_ms: u64,
}

/// `--events FILE`: one JSON line per finished download, appended as it finishes (each line is
/// one `write` on a file opened with `O_APPEND`, so workers and processes never interleave).
pub struct DownloadLog {
    file: Mutex<File>,
}

impl DownloadLog {
    /// Opens (creates, appends to) `path`.
    pub fn open(path: &Path) -> std::io::Result<DownloadLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DownloadLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record. A failed write is reported once on stderr and otherwise ignored (the
    /// harness then sees a download it cannot account for, and says so).
    pub fn record(&self, r: &DownloadRecord) {
        let mut line = serde_json::to_vec(r).expect("a record serializes");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line) {
            eprintln!("weir-load: writing --events: {e}");
        }
    }

    /// Reads every record of a file written by [`DownloadLog::record`] (lines that do not parse,
    /// such as a torn last line, are skipped).
    pub fn read(path: &Path) -> std::io::Result<Vec<DownloadRecord>> {
        Ok(std::fs::read_to_string(path)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// `--gate DIR`: download `n` of user `u` starts only once the file `DIR/<u>-<n>` exists
/// (checked on the worker's tick, every 10 ms, while the user waits).
#[derive(Clone, Debug)]
pub struct Gate {
    dir: PathBuf,
}

impl Gate {
    pub fn new(dir: &Path) -> Gate {
        Gate {
            dir: dir.to_owned(),
        }
    }

    /// The file that opens download `n` of user `u`.
    pub fn path(&self, user: usize, n: u64) -> PathBuf {
        self.dir.join(format!("{user}-{n}"))
    }

    /// Whether download `n` of user `u` may start.
    pub fn is_open(&self, user: usize, n: u64) -> bool {
        self.path(user, n).exists()
    }

    /// Opens download `n` of user `u` (what the harness calls).
    pub fn open(&self, user: usize, n: u64) -> std::io::Result<()> {
        File::create(self.path(user, n)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let log = DownloadLog::open(&p).unwrap();
        let a = DownloadRecord {
            user: 3,
            download: 7,
            bytes: 1 << 20,
            verified: Some(true),
            took_ms: 1234,
        };
        log.record(&a);
        log.record(&DownloadRecord {
            verified: None,
            ..a.clone()
        });
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"user\":1,\"dow")
            .unwrap();
        let got = DownloadLog::read(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], a);
        assert_eq!(got[1].verified, None);
    }

    #[test]
    fn a_gate_opens_one_download_of_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let g = Gate::new(dir.path());
        assert!(!g.is_open(2, 0));
        g.open(2, 0).unwrap();
        assert!(g.is_open(2, 0));
        assert!(!g.is_open(2, 1));
        assert!(!g.is_open(1, 0));
    }
}
