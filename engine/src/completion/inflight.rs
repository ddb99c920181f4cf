//! Credits that survive SIGKILL: each live response run's state in a shared file mapping.
//!
//! The ledger journals progress about once a second, and workers poll `TCP_INFO` about once a
//! second, so a process killed mid-download would lose up to a couple of seconds of credits and
//! never learn what it had written but not yet seen acknowledged. This module closes both gaps
//! with no syscall per credit: every I/O worker owns one file, `inflight/<pid>-<start time>-<worker>.map` in
//! the data directory, mapped `MAP_SHARED`, made of fixed-size [`SLOT`]-byte records. A record
//! describes one *run* of a live connection: contiguous content bytes of one (user, item, part)
//! written on it by one response (with the wall-clock millisecond that response started, which
//! ties its credits to the purchase they were earned for), from `start`, with how far it was
//! credited (`credited`: acknowledged by the client's TCP, handed to the ledger) and how far it
//! was written to the kernel (`written`).
//! Updates are plain memory stores into the mapping (under an uncontended per-worker lock, which
//! costs no syscall); the kernel keeps the dirty pages of a shared file mapping when the process
//! dies, whatever the signal, and writes them back.
//!
//! On start, before any worker runs, [`recover`] reads every map file left behind and the ledger
//! replays it: `start..credited` is credited (it was delivered), and `credited..written` becomes
//! *pending evidence* (see [`super::ledger`]): bytes the client may hold, credited only when the
//! same user later resumes that part from an offset inside the span. The files are deleted only
//! once the ledger has durably journaled what they said.
//!
//! The file is preallocated (`posix_fallocate`) when it is created, so stores into the mapping
//! never need new blocks: a full disk can fail the creation (the worker then runs without one,
//! which only means the old once-a-second durability), never a store (which would be `SIGBUS`).
//! A run whose user and item names do not fit a record, or that finds no free record, is simply
//! not recorded (counted in [`InflightFile::overflows`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use memmap2::MmapMut;

use super::orphans;

/// Bytes per record.
pub const SLOT: usize = 256;
/// Records per worker file by default (2 MiB a worker).
pub const DEFAULT_SLOTS: u32 = 8192;
/// The subdirectory of the data directory holding the map files.
pub const DIR: &str = "inflight";

/// Marks a record in use (any other value: free). Written last when a record is claimed. It is
/// also the format marker. Format 3 also carries the run's socket ([`Origin`]). Format 2
/// records (`LIVE_V2`, no origin) are still read; records of files written before format 2
/// (marker `0x7765_6972_5f72_756e`, "weir_run") are read as free: their credits cannot be tied
/// to a purchase, so they are ignored (never misapplied).
const LIVE: u64 = 0x7765_6972_5f72_7633; // "weir_rv3"
const LIVE_V2: u64 = 0x7765_6972_5f72_7632; // "weir_rv2"
const OFF_STATE: usize = 0;
const OFF_PART: usize = 8;
const OFF_ULEN: usize = 12;
const OFF_ILEN: usize = 14;
const OFF_START: usize = 16;
const OFF_CREDITED: usize = 24;
const OFF_WRITTEN: usize = 32;
const OFF_STARTED_MS: usize = 40;
/// Format 3: the socket's cookie (0: unknown), the stream offset of content byte `start`, and
/// the [`orphans::host_key`] the cookie belongs to.
const OFF_COOKIE: usize = 48;
const OFF_STREAM_AT: usize = 56;
const OFF_HOST: usize = 64;
const OFF_NAMES: usize = 72;
/// Where format 2 kept the names.
const OFF_NAMES_V2: usize = 48;
/// Room for the user name and the item id together.
pub const NAMES_MAX: usize = SLOT - OFF_NAMES;

/// Where a run's bytes went: its socket and the stream offset of its first content byte. After
/// a crash the kernel may still know how far that socket was acknowledged ([`orphans`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The socket's `SO_COOKIE`.
    pub cookie: u64,
    /// Stream offset (as `tcpi_bytes_acked` counts) of the run's content offset `start`.
    pub stream_at: u64,
}

/// One record read back after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub user: String,
    pub item: String,
    pub part: u32,
    /// When the response carrying the run started (Unix milliseconds): its credits count only
    /// for a purchase made no later (see [`super::ledger`]).
    pub started_ms: i64,
    /// Content offset where the run started.
    pub start: u64,
    /// Content offset up to which the run was credited.
    pub credited: u64,
    /// Content offset up to which the run was written to the kernel.
    pub written: u64,
    /// The run's socket, when recorded on this boot and in this network namespace.
    pub origin: Option<Origin>,
}

/// A claimed record of an [`InflightFile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

/// Process clock of [`Watermark`], in nanoseconds.
pub fn clock_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The ledger's watermark: every credit sent to it before this [`clock_ns`] is journaled (or
/// its purchase completed), so records retired before then may be reused. Shared by a ledger
/// ([`crate::completion::Ledger::durable_watermark`]) and the map files of its workers.
#[derive(Clone, Debug, Default)]
pub struct Watermark(Arc<AtomicU64>);

impl Watermark {
    /// The ledger: every credit sent before `ns` is journaled.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_max(ns, Ordering::AcqRel);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One worker's map file.
///
/// A record whose run is over ([`InflightFile::release`]) stays live in the file until the
/// ledger has journaled the credits it mirrored: released records wait in `released` until the
/// worker has handed its credit batch to the ledger ([`InflightFile::stamp`]), then in
/// `retiring` until the ledger's [`Watermark`] passes that moment; only then are they freed. So at every
/// instant a credit is in the journal, or in a live record, or both.
pub struct InflightFile {
    map: Mutex<MmapMut>,
    /// Free record indices (the worker's own bookkeeping, not in the file).
    free: Mutex<Vec<u32>>,
    /// Released, credits not yet handed to the ledger.
    released: Mutex<Vec<u32>>,
    /// Released, credits handed to the ledger at the stamped [`clock_ns`].
    retiring: Mutex<VecDeque<(u32, u64)>>,
    durable: Watermark,
    overflows: AtomicU64,
    path: PathBuf,
}

fn put(map: &mut [u8], at: usize, bytes: &[u8]) {
    map[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl InflightFile {
    /// Creates `dir/inflight/<pid>-<start time>-<worker>.map` with `slots` free records, preallocated.
    pub fn create(
        data_dir: &Path,
        worker: usize,
        slots: u32,
        durable: Watermark,
    ) -> io::Result<InflightFile> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}{worker}.map", process_tag()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let len = slots as usize * SLOT;
        if let Err(e) = preallocate(&file, len as u64) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // SAFETY: the file was just created (truncated) by this process under a name holding its
        // pid, and no other code maps or writes it; it is never truncated while mapped, so the
        // mapping stays valid for its lifetime.
        let map = unsafe { MmapMut::map_mut(&file) }?;
        Ok(InflightFile {
            map: Mutex::new(map),
            free: Mutex::new((0..slots).rev().collect()),
            released: Mutex::new(Vec::new()),
            retiring: Mutex::new(VecDeque::new()),
            durable,
            overflows: AtomicU64::new(0),
            path,
        })
    }

    /// Claims a record for a run of (`user`, `item`, `part`) starting at content offset `start`,
    /// in a response started at `started_ms` (Unix milliseconds), nothing credited or written
    /// yet. `None` when the names do not fit or no record is free.
    pub fn claim(
        &self,
        user: &str,
        item: &str,
        part: u32,
        started_ms: i64,
        start: u64,
        origin: Option<Origin>,
    ) -> Option<Slot> {
        if user.len() + item.len() > NAMES_MAX {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.reap();
        let Some(i) = self.free.lock().ok()?.pop() else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let at = i as usize * SLOT;
        {
            let mut m = self.map.lock().ok()?;
            put(&mut m, at + OFF_PART, &part.to_le_bytes());
            put(&mut m, at + OFF_ULEN, &(user.len() as u16).to_le_bytes());
            put(&mut m, at + OFF_ILEN, &(item.len() as u16).to_le_bytes());
            put(&mut m, at + OFF_STARTED_MS, &started_ms.to_le_bytes());
            put(&mut m, at + OFF_START, &start.to_le_bytes());
            put(&mut m, at + OFF_CREDITED, &start.to_le_bytes());
            put(&mut m, at + OFF_WRITTEN, &start.to_le_bytes());
            let (cookie, stream_at) = origin.map_or((0, 0), |o| (o.cookie, o.stream_at));
            put(&mut m, at + OFF_COOKIE, &cookie.to_le_bytes());
            put(&mut m, at + OFF_STREAM_AT, &stream_at.to_le_bytes());
            put(&mut m, at + OFF_HOST, &orphans::host_key().to_le_bytes());
            put(&mut m, at + OFF_NAMES, user.as_bytes());
            put(&mut m, at + OFF_NAMES + user.len(), item.as_bytes());
        }
        // A second critical section: the lock's release orders every store above before the
        // state, so a record is never live with half its fields.
        self.store(Slot(i), OFF_STATE, LIVE);
        Some(Slot(i))
    }

    /// The run was written to the kernel up to content offset `end`.
    pub fn set_written(&self, slot: Slot, end: u64) {
        self.store(slot, OFF_WRITTEN, end);
    }

    /// The run was credited up to content offset `end`.
    pub fn set_credited(&self, slot: Slot, end: u64) {
        self.store(slot, OFF_CREDITED, end);
    }

    /// The run ended (all of it credited, or its connection closed): the record is freed once
    /// the ledger journaled its credits (see the type's docs).
    pub fn release(&self, slot: Slot) {
        if let Ok(mut r) = self.released.lock() {
            r.push(slot.0);
        }
    }

    /// The worker handed its credit batch to the ledger: records released so far wait for the
    /// journal to pass this moment.
    pub fn stamp(&self) {
        let Ok(mut released) = self.released.lock() else {
            return;
        };
        if released.is_empty() {
            return;
        }
        let now = clock_ns();
        if let Ok(mut retiring) = self.retiring.lock() {
            retiring.extend(released.drain(..).map(|i| (i, now)));
        }
    }

    /// Frees the retiring records whose credits are journaled.
    fn reap(&self) {
        let durable = self.durable.get();
        let (Ok(mut retiring), Ok(mut free)) = (self.retiring.lock(), self.free.lock()) else {
            return;
        };
        while let Some(&(i, at)) = retiring.front() {
            if at >= durable {
                break;
            }
            retiring.pop_front();
            self.store(Slot(i), OFF_STATE, 0);
            free.push(i);
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs that found no record (names too long, or all records in use).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    fn store(&self, slot: Slot, off: usize, v: u64) {
        if let Ok(mut m) = self.map.lock() {
            put(&mut m, slot.0 as usize * SLOT + off, &v.to_le_bytes());
        }
    }
}

/// Removes this process's own map files: called by the ledger at a clean exit, once its last
/// flush succeeded (every credit is journaled, so they have nothing to tell the next start).
pub fn remove_own(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join(DIR)) else {
        return;
    };
    let mine = process_tag();
    let files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(mine) && n.ends_with(".map"))
        })
        .collect();
    remove(&files);
}

/// Reserves the file's blocks so that later stores into its mapping never need space.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: `fd` is an open file descriptor owned by `file` for the whole call.
    let r = unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) };
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The prefix of this process's map file names: its pid and start time, so that a restarted
/// process that got the same pid never mistakes the files of its predecessor for its own.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}-", std::process::id())
    })
}

/// Parses the live records of one map file's bytes.
pub fn parse(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    for rec in bytes.chunks_exact(SLOT) {
        let names_at = match u64_at(rec, OFF_STATE) {
            LIVE => OFF_NAMES,
            LIVE_V2 => OFF_NAMES_V2,
            _ => continue,
        };
        let part = u32::from_le_bytes(rec[OFF_PART..OFF_PART + 4].try_into().expect("4 bytes"));
        let ulen = u16::from_le_bytes([rec[OFF_ULEN], rec[OFF_ULEN + 1]]) as usize;
        let ilen = u16::from_le_bytes([rec[OFF_ILEN], rec[OFF_ILEN + 1]]) as usize;
        let (start, credited, written) = (
            u64_at(rec, OFF_START),
            u64_at(rec, OFF_CREDITED),
            u64_at(rec, OFF_WRITTEN),
        );
        if names_at + ulen + ilen > SLOT || !(start <= credited && credited <= written) {
            continue;
        }
        let started_ms = u64_at(rec, OFF_STARTED_MS) as i64;
        let names = &rec[names_at..names_at + ulen + ilen];
        let origin = (names_at == OFF_NAMES
            && u64_at(rec, OFF_COOKIE) != 0
            && u64_at(rec, OFF_HOST) == orphans::host_key())
        .then(|| Origin {
            cookie: u64_at(rec, OFF_COOKIE),
            stream_at: u64_at(rec, OFF_STREAM_AT),
        });
        let (Ok(user), Ok(item)) = (
            std::str::from_utf8(&names[..ulen]),
            std::str::from_utf8(&names[ulen..]),
        ) else {
            continue;
        };
        out.push(Record {
            user: user.to_owned(),
            item: item.to_owned(),
            part,
            started_ms,
            start,
            credited,
            written,
            origin,
        });
    }
    out
}

/// The map files left in `data_dir` by earlier processes and the live records they hold. Files
/// of this process are skipped. Delete the files (with [`remove`]) only once what they say is
/// durable elsewhere.
pub fn recover(data_dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<Record>)> {
    let dir = data_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mine = process_tag();
    let (mut files, mut records) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".map") || name.starts_with(mine) {
            continue;
        }
        records.extend(parse(&std::fs::read(&path)?));
        files.push(path);
    }
    Ok((files, records))
}

/// Deletes map files whose records are durable elsewhere.
pub fn remove(files: &[PathBuf]) {
    for f in files {
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %f.display(), error = %e, "removing a replayed map file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin = Origin {
        cookie: 0x1234,
        stream_at: 180,
    };

    #[test]
    fn records_survive_without_a_clean_exit_and_freed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watermark::default();
        let f = InflightFile::create(dir.path(), 3, 4, w.clone()).unwrap();
        let f_name = f.path().file_name().unwrap().to_owned();
        let a = f
            .claim("alice", "movie", 0, 42, 1000, Some(ORIGIN))
            .unwrap();
        f.set_written(a, 5000);
        f.set_credited(a, 3000);
        let b = f.claim("bob", "album", 2, 42, 0, None).unwrap();
        f.set_written(b, 10);
        f.release(b);
        f.stamp();
        // Not reused, and still in the file, until the ledger journaled what it credited.
        let c = f.claim("carol", "x", 1, 43, 7, None).unwrap();
        assert_ne!(c, b);
        assert_eq!(parse(&std::fs::read(f.path()).unwrap()).len(), 3);
        w.advance(clock_ns());
        let d = f.claim("dave", "y", 0, 44, 0, None).unwrap();
        f.release(d);
        assert_ne!(c, a);
        // Read the file as the next process would (SIGKILL leaves it as it is).
        let records = parse(&std::fs::read(&f.path).unwrap());
        assert_eq!(
            records,
            vec![
                Record {
                    user: "alice".into(),
                    item: "movie".into(),
                    part: 0,
                    started_ms: 42,
                    start: 1000,
                    credited: 3000,
                    written: 5000,
                    origin: Some(ORIGIN),
                },
                // dave (in bob's freed record): released, not yet stamped: still live.
                Record {
                    user: "dave".into(),
                    item: "y".into(),
                    part: 0,
                    started_ms: 44,
                    start: 0,
                    credited: 0,
                    written: 0,
                    origin: None,
                },
                Record {
                    user: "carol".into(),
                    item: "x".into(),
                    part: 1,
                    started_ms: 43,
                    start: 7,
                    credited: 7,
                    written: 7,
                    origin: None,
                },
            ]
        );
        // This process's own files are not "left behind"; a clean exit removes them.
        assert!(recover(dir.path()).unwrap().1.is_empty());
        drop(f);
        remove_own(dir.path());
        assert!(!dir.path().join(DIR).join(f_name).exists());
    }

    #[test]
    fn names_that_do_not_fit_and_a_full_file_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let f = InflightFile::create(dir.path(), 0, 1, Watermark::default()).unwrap();
        assert!(f
            .claim(&"u".repeat(NAMES_MAX), "i", 0, 0, 0, None)
            .is_none());
        assert!(f.claim("u", "i", 0, 0, 0, None).is_some());
        assert!(f.claim("u", "j", 0, 0, 0, None).is_none());
        assert_eq!(f.overflows(), 2);
    }

    #[test]
    fn a_file_of_another_process_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let f = InflightFile::create(dir.path(), 0, 2, Watermark::default()).unwrap();
        let s = f.claim("u", "i", 0, 0, 0, None).unwrap();
        f.set_written(s, 9);
        let other = dir.path().join(DIR).join("1-0.map");
        std::fs::copy(&f.path, &other).unwrap();
        let (files, records) = recover(dir.path()).unwrap();
        assert_eq!(files, vec![other]);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].written, 9);
        remove(&files);
        assert!(recover(dir.path()).unwrap().0.is_empty());
        drop(f);
    }

    /// A file from before the response start was recorded: its records are not read (their
    /// credits could not be tied to a purchase).
    #[test]
    fn records_of_the_previous_format_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let f = InflightFile::create(dir.path(), 0, 2, Watermark::default()).unwrap();
        let s = f.claim("u", "i", 0, 5, 0, None).unwrap();
        f.set_written(s, 9);
        let mut bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(parse(&bytes).len(), 1);
        bytes[OFF_STATE..OFF_STATE + 8].copy_from_slice(&0x7765_6972_5f72_756e_u64.to_le_bytes());
        assert!(parse(&bytes).is_empty());
    }

    /// A file of format 2 (no socket): its records are read, with no origin.
    #[test]
    fn records_of_format_2_are_read_without_an_origin() {
        let mut rec = vec![0u8; SLOT];
        put(&mut rec, OFF_PART, &3u32.to_le_bytes());
        put(&mut rec, OFF_ULEN, &1u16.to_le_bytes());
        put(&mut rec, OFF_ILEN, &2u16.to_le_bytes());
        put(&mut rec, OFF_START, &10u64.to_le_bytes());
        put(&mut rec, OFF_CREDITED, &20u64.to_le_bytes());
        put(&mut rec, OFF_WRITTEN, &30u64.to_le_bytes());
        put(&mut rec, OFF_STARTED_MS, &99u64.to_le_bytes());
        put(&mut rec, OFF_NAMES_V2, b"uit");
        put(&mut rec, OFF_STATE, &LIVE_V2.to_le_bytes());
        assert_eq!(
            parse(&rec),
            vec![Record {
                user: "u".into(),
                item: "it".into(),
                part: 3,
                started_ms: 99,
                start: 10,
                credited: 20,
                written: 30,
                origin: None,
            }]
        );
    }

    /// A cookie recorded on another boot or in another network namespace means nothing here.
    #[test]
    fn an_origin_of_another_host_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = InflightFile::create(dir.path(), 0, 1, Watermark::default()).unwrap();
        f.claim("u", "i", 0, 0, 0, Some(ORIGIN)).unwrap();
        let mut bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(parse(&bytes)[0].origin, Some(ORIGIN));
        let other = orphans::host_key().wrapping_add(1);
        bytes[OFF_HOST..OFF_HOST + 8].copy_from_slice(&other.to_le_bytes());
        assert_eq!(parse(&bytes)[0].origin, None);
    }
}
