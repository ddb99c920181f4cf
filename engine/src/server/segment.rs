//! Memory-mapped content-store files: the only place weir maps file bytes.
//!
//! # The immutability contract
//! A mapped page past the end of a file that was truncated raises SIGBUS when user space touches
//! it. weir never touches mapped bytes in user space: it only hands pointers into a mapping to the
//! kernel (`send`/`sendmsg`/io_uring SEND), which reports a truncated page as `EFAULT` on that one
//! send, and the connection is closed. CRCs and hashes are computed at import
//! ([`crate::catalog`]), never at serve time. Files in the content store are written once by the
//! import, made read-only, and never written by weir again; [`MappedFile::open`] also checks the
//! size recorded at import so a file changed by hand before it is mapped is refused.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use memmap2::Mmap;

/// A read-only mapping of one content-store file. Cheap to share (`Arc`).
pub struct MappedFile {
    /// INVARIANT: bytes of this mapping are never read by weir's user-space code; only pointers
    /// into it are passed to the kernel. See the module docs.
    map: Option<Mmap>,
    len: u64,
    /// Kept open for `sendfile(2)`, which attaches page-cache pages to the socket instead of
    /// copying them (one descriptor per content file, shared by every download of it).
    file: File,
}

impl MappedFile {
    /// Map `path`, which the import recorded as `expected_len` bytes.
    pub fn open(path: &Path, expected_len: u64) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let actual = file.metadata()?.len();
        if actual != expected_len {
            return Err(io::Error::other(format!(
                "{} is {actual} bytes, the catalog recorded {expected_len}: the content store was modified",
                path.display()
            )));
        }
        if expected_len == 0 {
            return Ok(MappedFile {
                map: None,
                len: 0,
                file,
            });
        }
        // SAFETY: memmap2 requires that the file is not modified while mapped, or that every
        // access tolerates it. Content-store files are immutable once imported (module docs), and
        // weir never dereferences the mapping in user space: a truncation by an outside party
        // can only make a kernel send fail with EFAULT, never a SIGBUS in this process.
        let map = unsafe { Mmap::map(&file)? };
        // Sequential readahead suits downloads; failure is harmless.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile {
            map: Some(map),
            len: expected_len,
            file,
        })
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
