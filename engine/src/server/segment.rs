//! Memory-mapped content-store files: the only place weir maps file bytes.
//!
//! # The immutability contract
//! A mapped page past the end of a file that was truncated raises SIGBUS when user space touches
//! it. weir never touches mapped bytes in user space: it only hands pointers into a mapping to the
//! kernel (`send`/`sendmsg`/io_uring SEND), which reports a truncated page as `EFAULT` on that one
//! send, and the connection is closed. CRCs and hashes are computed at import
//! ([`crate::catalog`]), never at serve time. Files in the content store are written once by the
//! import, made read-only, and never written by weir again.
//!
//! # A damaged content file
//! Someone may still truncate or rewrite a content file by hand. Each mapping therefore tracks
//! the health of its blob ([`MappedFile::available`]): the file's size and modification time
//! (from `fstat` of the open descriptor, the mapped inode) are compared with the import's size
//! and with the identity seen when it was mapped, at most once per [`CHECK_EVERY`] and only when
//! a request needs the file; a send that fails with `EFAULT` (or a `sendfile` that finds the
//! end of the file early) marks it bad at once ([`MappedFile::mark_bad`]). While bad, its items
//! answer 503 with `Retry-After`; once the file is restored in place with its size and
//! modification time (`cp -p`, `rsync -a` from a backup) the next check serves it again. Each
//! change of state is logged once per blob, never per request. A file that was already the
//! wrong size when weir mapped it starts bad; the first check that finds the import's size
//! takes that identity as the good one. Only `weir item verify` rechecks the content itself.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapOptions};

/// A blob's identity is checked at most this often (one `fstat`), and only when requested.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Size and modification time (nanoseconds) of a content file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// Milliseconds since the first call in this process (a coarse monotonic clock for atomics).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether a blob can be served, shared by every worker mapping it.
struct Health {
    /// The blob is known bad (truncated, changed, a send faulted).
    bad: AtomicBool,
    /// When the identity was last checked ([`now_ms`]); `u64::MAX`: never.
    checked_ms: AtomicU64,
    /// The identity that counts as good (`None` until a file of the right size was seen).
    good: Mutex<Option<Identity>>,
}

/// A read-only mapping of one content-store file. Cheap to share (`Arc`).
pub struct MappedFile {
    /// INVARIANT: bytes of this mapping are never read by weir's user-space code; only pointers
    /// into it are passed to the kernel. See the module docs.
    map: Option<Mmap>,
    len: u64,
    /// Kept open for `sendfile(2)`, which attaches page-cache pages to the socket instead of
    /// copying them (one descriptor per content file, shared by every download of it).
    file: File,
    /// The content file, for log lines.
    path: PathBuf,
    health: Health,
}

impl MappedFile {
    /// Map `path`, which the import recorded as `expected_len` bytes. A file of another size
    /// is mapped at the recorded length all the same, and starts bad (see the module docs).
    pub fn open(path: &Path, expected_len: u64) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let now = Identity::of(&file.metadata()?);
        let good = (now.size == expected_len).then_some(now);
        if good.is_none() {
            tracing::error!(
                file = %path.display(),
                size = now.size,
                expected = expected_len,
                "content file damaged (size differs from the import): its items answer 503 \
                 until it is restored; `weir item verify` checks the store"
            );
        }
        let health = Health {
            bad: AtomicBool::new(good.is_none()),
            checked_ms: AtomicU64::new(now_ms()),
            good: Mutex::new(good),
        };
        let path = path.to_path_buf();
        if expected_len == 0 {
            return Ok(MappedFile {
                map: None,
                len: 0,
                file,
                path,
                health,
            });
        }
        // SAFETY: memmap2 requires that the file is not modified while mapped, or that every
        // access tolerates it. Content-store files are immutable once imported (module docs), and
        // weir never dereferences the mapping in user space: a truncation by an outside party
        // can only make a kernel send fail with EFAULT, never a SIGBUS in this process.
        // A length past the end of a shrunken file is fine for the same reason.
        let map = unsafe { MmapOptions::new().len(expected_len as usize).map(&file)? };
        // Sequential readahead suits downloads; failure is harmless.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile {
            map: Some(map),
            len: expected_len,
            file,
            path,
            health,
        })
    }

    /// Whether the blob may be served now: not marked bad, its identity re-checked (one
    /// `fstat`) if the last check is older than [`CHECK_EVERY`]. Logs a change of state once.
    pub fn available(&self) -> bool {
        let h = &self.health;
        let now = now_ms();
        let last = h.checked_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= CHECK_EVERY.as_millis() as u64;
        // One caller per period does the check; the others use the last answer.
        if due
            && h.checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.check();
        }
        !h.bad.load(Ordering::Relaxed)
    }

    /// Compare the file's identity with the good one; update and log the state.
    fn check(&self) {
        let seen = match self.file.metadata() {
            Ok(m) => Identity::of(&m),
            Err(_) => return, // keep the last answer
        };
        let healthy = {
            let mut good = self.health.good.lock().unwrap_or_else(|e| e.into_inner());
            match *good {
                Some(g) => g == seen,
                None if seen.size == self.len => {
                    *good = Some(seen);
                    true
                }
                None => false,
            }
        };
        let was_bad = self.health.bad.swap(!healthy, Ordering::Relaxed);
        if was_bad && healthy {
            tracing::warn!(file = %self.path.display(), "content file restored: serving it again");
        } else if !was_bad && !healthy {
            tracing::error!(
                file = %self.path.display(),
                size = seen.size,
                expected = self.len,
                "content file truncated or changed since it was mapped: its items answer 503 \
                 until it is restored; `weir item verify` checks the store"
            );
        }
    }

    /// A send from this file failed in a way only a damaged file explains (`EFAULT`, or
    /// `sendfile` at an early end of file): mark the blob bad now, logged once. The next
    /// check ([`MappedFile::available`]) clears it if the file turns out unchanged.
    pub fn mark_bad(&self, why: &str) {
        if !self.health.bad.swap(true, Ordering::Relaxed) {
            self.health.checked_ms.store(now_ms(), Ordering::Relaxed);
            tracing::error!(
                file = %self.path.display(),
                reason = why,
                "content file damaged under a send: its items answer 503 until it is restored; \
                 `weir item verify` checks the store"
            );
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The open content file, for `sendfile(2)`. A truncated file makes sendfile return short
    /// (never SIGBUS): the connection is closed.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy bytes from `offset` into `buf` with `pread` (for TLS, which encrypts in user
    /// space): a truncated file reads short, never SIGBUS. Returns the bytes read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }

    /// Pointer to byte `offset` for the kernel, with at most `max` bytes available from there.
    /// The pointer may only be passed to syscalls (see the module docs), never dereferenced.
    pub fn kernel_ptr(&self, offset: u64, max: u64) -> (*const u8, usize) {
        debug_assert!(offset <= self.len);
        let avail = (self.len - offset).min(max) as usize;
        match &self.map {
            // `as_ptr().wrapping_add` computes an address without reading through it.
            Some(m) => (m.as_ptr().wrapping_add(offset as usize), avail),
            None => (std::ptr::NonNull::<u8>::dangling().as_ptr(), 0),
        }
    }
}
