//! The content store: where files are imported before weir serves them, and why they never change.
//!
//! Every blob lives at `<data>/store/<sha256hex>`, named by the SHA-256 of its bytes, read-only
//! (mode 0444). [`import_file`] is the only code that creates these files, and nothing in weir
//! opens them for writing afterwards.
//!
//! # The immutability contract
//!
//! The server memory-maps blobs and hands the mapped pages to the kernel to send. A mapped page
//! past the end of a file that was truncated underneath raises SIGBUS in whoever reads it, so the
//! server's safety rests on the promise that *a mapped blob is never mutated*. This module is what
//! makes that promise true for weir itself:
//!
//! - the bytes are copied (not linked or moved) from the source, so later edits to the source file
//!   do not reach the store;
//! - the copy is written to a temporary file, fsynced, made read-only, and only then renamed to
//!   its final name, so a blob is visible only once complete, and renaming never modifies an inode
//!   that some mapping may already hold;
//! - a blob that already exists is left alone (content addressing makes it a duplicate), unless
//!   its size shows it was damaged, in which case the fresh copy is renamed over it: the damaged
//!   inode stays intact for anyone still holding it.
//!
//! A person truncating a blob by hand breaks the contract from outside; the server defends
//! against that separately (it checks sizes before mapping and never reads mapped bytes in user
//! space). SHA-256 and CRC32 are computed here, once, in the same pass as the copy, so nothing has
//! to read mapped bytes at serve time.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// One immutable file in the content store, as a part of an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// SHA-256 of the bytes, lowercase hex; also the file's name in the content store.
    pub sha256: String,
    pub size: u64,
    /// CRC-32 (IEEE), computed at import for zip entries.
    pub crc32: u32,
    /// The original file name (a track's name inside an album's zip).
    pub name: String,
    /// The original file's modification time, unix seconds.
    pub mtime: u64,
    /// Absolute path in the content store.
    pub path: PathBuf,
}

/// Size of the copy buffer.
const CHUNK: usize = 256 * 1024;

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Reading the source or writing the store failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The source is not a regular file (a directory, a device, ...).
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// The source's file name is missing or not UTF-8; the name is shown to clients.
    #[error("{0}: the file name must be valid UTF-8")]
    BadName(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the blob with this SHA-256 (lowercase hex) lives in `store_dir`.
pub fn blob_path(store_dir: &Path, sha256: &str) -> PathBuf {
    store_dir.join(sha256)
}

/// Copies `src` into the content store `store_dir` (which must exist) and describes the result.
///
/// `name` is the source's file name and `mtime` its modification time (unix seconds); `path` is
/// `store_dir/<sha256>`, absolute when `store_dir` is. Importing the same bytes twice stores them
/// once. See the module docs for why the copy is done this way.
pub fn import_file(store_dir: &Path, src: &Path) -> Result<Blob, CatalogError> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CatalogError::BadName(src.to_owned()))?
        .to_owned();
    let mut input = File::open(src).map_err(io_err(src))?;
    let meta = input.metadata().map_err(io_err(src))?;
    if !meta.is_file() {
        return Err(CatalogError::NotAFile(src.to_owned()));
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());

    let (tmp_path, mut tmp) = create_temp(store_dir)?;
    // Remove the temporary file on any early return.
    let guard = TempGuard(Some(tmp_path.clone()));

    let mut sha = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(src)(e)),
        };
        sha.update(&buf[..n]);
        crc.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io_err(&tmp_path))?;
        size += n as u64;
    }
    tmp.sync_all().map_err(io_err(&tmp_path))?;
    tmp.set_permissions(Permissions::from_mode(0o444))
        .map_err(io_err(&tmp_path))?;
    drop(tmp);

    let sha256 = hex::encode(sha.finalize());
    let crc32 = crc.finalize();
    let path = blob_path(store_dir, &sha256);
    let intact = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size);
    if !intact {
        fs::rename(&tmp_path, &path).map_err(io_err(&path))?;
        guard.disarm();
        File::open(store_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(store_dir))?;
    }
    // When the blob was already there, the guard removes the duplicate.
    Ok(Blob {
        sha256,
        size,
        crc32,
        name,
        mtime,
        path,
    })
}

/// What [`verify_blob`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// The file has the size and SHA-256 of the import.
    Ok,
    /// The file is missing or unreadable.
    Unreadable(String),
    /// The file's size differs from the import.
    WrongSize(u64),
    /// Same size, other bytes.
    WrongHash(String),
}

impl std::fmt::Display for BlobCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobCheck::Ok => write!(f, "ok"),
            BlobCheck::Unreadable(e) => write!(f, "unreadable: {e}"),
            BlobCheck::WrongSize(n) => write!(f, "size is {n} bytes"),
            BlobCheck::WrongHash(h) => write!(f, "SHA-256 is {h}"),
        }
    }
}

/// Re-reads a content-store file with `read(2)` (never a mapping: a truncated file must not
/// fault this process) and compares its size and SHA-256 with the import's.
pub fn verify_blob(blob: &Blob) -> BlobCheck {
    let mut file = match File::open(&blob.path) {
        Ok(f) => f,
        Err(e) => return BlobCheck::Unreadable(e.to_string()),
    };
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sha.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return BlobCheck::Unreadable(e.to_string()),
        }
    }
    if size != blob.size {
        return BlobCheck::WrongSize(size);
    }
    let hash = hex::encode(sha.finalize());
    if hash != blob.sha256 {
        return BlobCheck::WrongHash(hash);
    }
    BlobCheck::Ok
}

/// Creates a fresh private temporary file in `dir`.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), CatalogError> {
    for _ in 0..16 {
        let path = dir.join(format!(".import-{:016x}", rand::random::<u64>()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(io_err(dir)(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick a temporary file name",
    )))
}

/// Deletes a temporary file when dropped, unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_dir(tmp: &tempfile::TempDir) -> PathBuf {
        let d = tmp.path().join("store");
        fs::create_dir(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn known_hashes_and_dedup() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_dir(&tmp);
        let src = tmp.path().join("check.txt");
        fs::write(&src, b"123456789").unwrap();

        let a = import_file(&store, &src).unwrap();
        assert_eq!(
            a.sha256,
            "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"
        );
        // The standard CRC-32 check value.
        assert_eq!(a.crc32, 0xCBF4_3926);
        assert_eq!(a.size, 9);
        assert_eq!(a.name, "check.txt");
        assert_eq!(a.path, store.join(&a.sha256));
        assert_eq!(fs::read(&a.path).unwrap(), b"123456789");
        let mode = fs::metadata(&a.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);

        // Same bytes under another name: one blob, no temporary files left behind.
        let src2 = tmp.path().join("again.bin");
        fs::write(&src2, b"123456789").unwrap();
        let b = import_file(&store, &src2).unwrap();
        assert_eq!(b.sha256, a.sha256);
        assert_eq!(b.name, "again.bin");
        assert_eq!(entries(&store), vec![a.sha256.clone()]);

        // Editing the source afterwards does not reach the store.
        fs::write(&src, b"changed").unwrap();
        assert_eq!(fs::read(&a.path).unwrap(), b"123456789");
    }

    #[test]
    fn damaged_blob_is_replaced_by_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_dir(&tmp);
        let src = tmp.path().join("f");
        fs::write(&src, vec![7u8; 1000]).unwrap();
        let a = import_file(&store, &src).unwrap();
        // Simulate someone truncating the blob by hand.
        fs::set_permissions(&a.path, Permissions::from_mode(0o644)).unwrap();
        File::options()
            .write(true)
            .open(&a.path)
            .unwrap()
            .set_len(10)
            .unwrap();
        let b = import_file(&store, &src).unwrap();
        assert_eq!(fs::metadata(&b.path).unwrap().len(), 1000);
        assert_eq!(entries(&store).len(), 1);
    }

    #[test]
    fn empty_file_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_dir(&tmp);
        let src = tmp.path().join("empty");
        fs::write(&src, b"").unwrap();
        let e = import_file(&store, &src).unwrap();
        assert_eq!(e.size, 0);
        assert_eq!(e.crc32, 0);
        assert_eq!(
            e.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );

        assert!(matches!(
            import_file(&store, tmp.path()),
            Err(CatalogError::NotAFile(_))
        ));
        assert!(matches!(
            import_file(&store, &tmp.path().join("missing")),
            Err(CatalogError::Io { .. })
        ));
        assert_eq!(entries(&store).len(), 1, "no temporary files left behind");
    }

    #[test]
    fn verify_finds_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_dir(&tmp);
        let src = tmp.path().join("a.bin");
        fs::write(&src, vec![5u8; 100_000]).unwrap();
        let blob = import_file(&store, &src).unwrap();
        assert_eq!(verify_blob(&blob), BlobCheck::Ok);
        fs::set_permissions(&blob.path, Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&blob.path).unwrap();
        bytes[500] ^= 1;
        fs::write(&blob.path, &bytes).unwrap();
        assert!(matches!(verify_blob(&blob), BlobCheck::WrongHash(_)));
        fs::write(&blob.path, &bytes[..10]).unwrap();
        assert_eq!(verify_blob(&blob), BlobCheck::WrongSize(10));
        fs::remove_file(&blob.path).unwrap();
        assert!(matches!(verify_blob(&blob), BlobCheck::Unreadable(_)));
    }
}
