//! Servable resources: catalog items with their content-store files mapped, and their validators.
//!
//! Resources are built off the I/O threads (at start, or by the auth pool when a worker meets an
//! item added after start) and shared read-only between workers through `Arc`.
//!
//! Each representation's name is decided here, once: a file downloads under its display name
//! (`--name`) or its original file name, a track under its own file name, an album's zip as
//! its display name or id plus `.zip`; `Content-Type` follows the original name's extension.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::completion::{ZipEntry, ZipLayout};
use crate::http::response::{content_disposition, media_type};
use crate::storage::{Item, ItemKind};

use super::segment::MappedFile;

/// One representation that can be sent from a mapped file: a file item or an album track.
pub struct Part {
    pub file: Arc<MappedFile>,
    /// Strong ETag, quotes included: derived from the content hash, stable across restarts.
    pub etag: String,
    pub last_modified: SystemTime,
    /// The original file name.
    pub name: String,
    /// `Content-Disposition`: the name a client saves this part as.
    pub disposition: String,
    /// `Content-Type`, from the original name's extension.
    pub content_type: &'static str,
}

/// An album's zip: laid out once (CRCs come from the import), served from literals and tracks.
pub struct ZipRep {
    pub layout: ZipLayout,
    /// Strong ETag over the tracks' hashes and names: the zip's bytes are a function of both.
    pub etag: String,
    pub last_modified: SystemTime,
    /// `Content-Disposition`: the album's display name (or id) + `.zip`.
    pub disposition: String,
}

/// The name a file item downloads as: its display name, given the original's extension when
/// it has none (a browser picks what opens a download by its extension), or the original name.
fn file_download_name(display: Option<&str>, original: &str) -> String {
    let Some(display) = display else {
        return original.to_owned();
    };
    let has_ext = |n: &str| {
        n.rsplit_once('.')
            .is_some_and(|(stem, e)| !stem.is_empty() && !e.is_empty())
    };
    match original.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() && !has_ext(display) => {
            format!("{display}.{ext}")
        }
        _ => display.to_owned(),
    }
}

/// The name an album's zip downloads as: its display name (or id) + `.zip`, unless the name
/// already ends so.
fn zip_download_name(name: &str) -> String {
    let has_zip = name.len() > 4
        && name
            .get(name.len() - 4..)
            .is_some_and(|e| e.eq_ignore_ascii_case(".zip"));
    if has_zip {
        name.to_owned()
    } else {
        format!("{name}.zip")
    }
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
            let saved_as = match item.kind {
                ItemKind::File => file_download_name(item.name.as_deref(), &blob.name),
                ItemKind::Album => blob.name.clone(),
            };
            parts.push(Part {
                file,
                etag: format!("\"{}\"", &blob.sha256[..32.min(blob.sha256.len())]),
                last_modified: UNIX_EPOCH + Duration::from_secs(blob.mtime),
                name: blob.name.clone(),
                disposition: content_disposition(&saved_as),
                content_type: media_type(&blob.name),
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
                disposition: content_disposition(&zip_download_name(
                    item.name.as_deref().unwrap_or(&item.id),
                )),
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

#[cfg(test)]
mod tests {
    use super::{file_download_name, zip_download_name};

    #[test]
    fn a_display_name_keeps_the_original_extension() {
        assert_eq!(file_download_name(None, "movie.mkv"), "movie.mkv");
        assert_eq!(
            file_download_name(Some("My Movie"), "movie.mkv"),
            "My Movie.mkv"
        );
        assert_eq!(
            file_download_name(Some("My Movie.webm"), "movie.mkv"),
            "My Movie.webm"
        );
        assert_eq!(file_download_name(Some("Notes"), "README"), "Notes");
        assert_eq!(
            file_download_name(Some("Take 2."), "a.flac"),
            "Take 2..flac"
        );
    }

    #[test]
    fn a_zip_is_named_once() {
        assert_eq!(zip_download_name("best"), "best.zip");
        assert_eq!(zip_download_name("Best Of.ZIP"), "Best Of.ZIP");
        assert_eq!(zip_download_name(".zip"), ".zip.zip");
        assert_eq!(zip_download_name("Ünïcode"), "Ünïcode.zip");
    }
}
