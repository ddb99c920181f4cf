//! Servable resources: catalog items with their content-store files mapped, and their validators.
//!
//! Resources are built off the I/O threads (at start, or by the auth pool when a worker meets an
//! item added after start) and shared read-only between workers through `Arc`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::completion::{ZipEntry, ZipLayout};
use crate::storage::{Item, ItemKind};

use super::segment::MappedFile;

/// One representation that can be sent from a mapped file: a file item or an album track.
pub struct Part {
    pub file: Arc<MappedFile>,
    /// Strong ETag, quotes included: derived from the content hash, stable across restarts.
    pub etag: String,
    pub last_modified: SystemTime,
    /// The original file name (zip entry names, Content-Disposition).
    pub name: String,
}

/// An album's zip: laid out once (CRCs come from the import), served from literals and tracks.
pub struct ZipRep {
    pub layout: ZipLayout,
    /// Strong ETag over the tracks' hashes and names: the zip's bytes are a function of both.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// A catalog item ready to serve.
pub struct Resource {
    pub id: String,
    /// The id again, shared: every download's accounting owner points at it (no allocation
    /// per request).
    pub key: Arc<str>,
    pub kind: ItemKind,
    /// A file: one part. An album: its tracks in order.
    pub parts: Vec<Part>,
    /// An album's zip (`/d/{album}.zip`).
    pub zip: Option<ZipRep>,
}

impl Resource {
    /// Map every file of `item`. Fails when a content-store file is missing or was modified.
    pub fn load(item: &Item) -> std::io::Result<Resource> {
        let mut parts = Vec::with_capacity(item.parts.len());
        for blob in &item.parts {
            let file = Arc::new(MappedFile::open(&blob.path, blob.size)?);
            parts.push(Part {
                file,
                etag: format!("\"{}\"", &blob.sha256[..32.min(blob.sha256.len())]),
                last_modified: UNIX_EPOCH + Duration::from_secs(blob.mtime),
                name: blob.name.clone(),
            });
        }
        let zip = (item.kind == ItemKind::Album).then(|| {
            let entries: Vec<ZipEntry> = item
                .parts
                .iter()
                .map(|b| ZipEntry {
                    name: b.name.clone(),
                    size: b.size,
                    crc32: b.crc32,
                    mtime_unix: b.mtime,
                })
                .collect();
            let mut h = Sha256::new();
            for b in &item.parts {
                h.update(b.sha256.as_bytes());
                h.update(b.name.as_bytes());
                h.update([0]);
            }
            let digest = hex::encode(h.finalize());
            ZipRep {
                layout: ZipLayout::new(&entries),
                etag: format!("\"z{}\"", &digest[..31]),
                last_modified: parts
                    .iter()
                    .map(|p| p.last_modified)
                    .max()
                    .unwrap_or(UNIX_EPOCH),
            }
        });
        Ok(Resource {
            key: Arc::from(item.id.as_str()),
            id: item.id.clone(),
            kind: item.kind,
            parts,
            zip,
        })
    }
}
