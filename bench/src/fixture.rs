//! The files both servers serve: incompressible bytes from a fixed seed, written once per run
//! under `<work>/root/d/<id>` so that nginx (root = `<work>/root`) and weir (`/d/<id>`) answer
//! the same URL path with the same bytes.
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Item id of the big file (1 GiB by default).
pub const BIG: &str = "big";
/// Item id of the 4 KiB file.
pub const SMALL: &str = "small4k";

#[derive(Clone, Debug, Serialize)]
pub struct File {
    pub id: String,
    pub path: PathBuf,
    pub len: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fixture {
    /// nginx's root: holds `d/<id>`.
    pub root: PathBuf,
    pub big: File,
    pub small: File,
}

impl Fixture {
    pub fn create(work: &Path, big_len: u64) -> Result<Fixture> {
        let root = work.join("root");
        let d = root.join("d");
        std::fs::create_dir_all(&d)?;
        let big = write_file(&d, BIG, big_len, 0x5eed_0001)?;
        let small = write_file(&d, SMALL, 4096, 0x5eed_0002)?;
        Ok(Fixture { root, big, small })
    }
}

/// A file of `len` incompressible bytes at `path`, reused when one of that size is already
/// there (scratch directories are kept between runs of the long benchmarks).
pub fn ensure(path: &Path, len: u64, seed: u64) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let dir = path.parent().context("file path without a directory")?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("non-UTF-8 file name")?;
    write_file(dir, name, len, seed).map(|_| ())
}

/// Writes `len` bytes of xorshift64* output and hashes them on the way.
fn write_file(dir: &Path, id: &str, len: u64, seed: u64) -> Result<File> {
    let path = dir.join(id);
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut h = Sha256::new();
    let mut state = seed;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(File {
        id: id.to_owned(),
        path,
        len,
        sha256: hex::encode(h.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_deterministic_and_hashed() {
        let t = tempfile::tempdir().unwrap();
        let a = write_file(t.path(), "a", 10_000, 7).unwrap();
        let b = write_file(t.path(), "b", 10_000, 7).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.sha256, crate::util::sha256_file(&a.path).unwrap());
        assert_eq!(std::fs::metadata(&a.path).unwrap().len(), 10_000);
    }
}
