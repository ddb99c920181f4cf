//! The deterministic stored zip of an album, laid out before a byte of it is sent.
//!
//! `GET /d/{album}.zip` serves the album's tracks as one zip archive, uncompressed (method 0,
//! "stored"), so that the archive is a fixed sequence of small literal byte strings (headers,
//! central directory, end records) and the tracks' file bytes. [`ZipLayout::new`] computes that
//! sequence from the track list alone: CRC32 and sizes come from the catalog (computed once at
//! import), so there are no data descriptors, nothing is read from the track files, and the
//! same entries give the same bytes on every request and across restarts. That is what lets a
//! download manager fetch the zip with 40 ranged connections, and lets delivered zip ranges be
//! credited to the tracks whose data they contain ([`ZipLayout::track_intervals`]).
//!
//! Format choices (APPNOTE 6.3.x):
//! - local header flags 0, or bit 11 when the name is not ASCII (UTF-8 name);
//! - DOS date and time from `mtime_unix` in UTC, clamped to 1980-01-01..2107-12-31;
//! - zip64 exactly when a value does not fit: a track of 0xFFFFFFFF bytes or more gets a zip64
//!   extra field (both sizes) in its local and central headers; a local header at an offset of
//!   0xFFFFFFFF or more gets one (offset) in its central header; the zip64 end of central
//!   directory record and its locator are written when there are 0xFFFF entries or more, or the
//!   central directory's offset or size is 0xFFFFFFFF or more (a sentinel value cannot be a
//!   real value);
//! - names come from the track files, sanitized: `/`, `\` and control characters become `_`,
//!   a name that is empty or only dots becomes `track-NN`, and names that collide (ignoring
//!   case) are prefixed with their 1-based track number.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// One track as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// File name of the track (sanitized by the layout, see the module docs).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the track's bytes, computed at import.
    pub crc32: u32,
    /// Modification time, seconds since the Unix epoch (UTC).
    pub mtime_unix: u64,
}

/// A contiguous piece of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipPiece {
    /// Bytes produced by the layout: headers, central directory, end records.
    Literal {
        /// Archive offset of the first byte.
        offset: u64,
        /// The bytes; never empty.
        bytes: Vec<u8>,
    },
    /// The whole content of one track.
    Data {
        /// Archive offset of the first byte.
        offset: u64,
        /// Index of the track in the entries given to [`ZipLayout::new`].
        track: usize,
        /// Bytes; never zero (an empty track has no data piece).
        len: u64,
    },
}

impl ZipPiece {
    /// Archive offset of the piece's first byte.
    pub fn offset(&self) -> u64 {
        match *self {
            ZipPiece::Literal { offset, .. } | ZipPiece::Data { offset, .. } => offset,
        }
    }

    /// Length of the piece in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ZipPiece::Literal { bytes, .. } => bytes.len() as u64,
            ZipPiece::Data { len, .. } => *len,
        }
    }

    /// Whether the piece is empty (never, for pieces of a layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Archive offset one past the piece's last byte.
    pub fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

/// A piece clipped to a requested range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipSlice<'a> {
    /// Literal bytes to send as they are.
    Literal(&'a [u8]),
    /// Bytes `range` of track `track`'s file.
    Data {
        /// Index of the track.
        track: usize,
        /// Byte range within the track.
        range: Range<u64>,
    },
}

/// The layout of an album's zip: every piece and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipLayout {
    /// INVARIANT: contiguous from 0 to `len`, no empty piece, no two literals in a row.
    pieces: Vec<ZipPiece>,
    len: u64,
    names: Vec<String>,
    /// Archive range of each track's data (empty for an empty track).
    data: Vec<Range<u64>>,
    zip64_end: bool,
}

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// 32-bit fields at or above this value are stored in zip64 records.
const MAX32: u64 = 0xFFFF_FFFF;
/// Entry counts at or above this value are stored in zip64 records.
const MAX16: u64 = 0xFFFF;
/// Version needed: 2.0 for stored files, 4.5 with zip64.
const VERSION_DEFAULT: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// Made by: Unix (3), spec 4.5, so `external_attr` carries a Unix mode.
const MADE_BY: u16 = (3 << 8) | VERSION_ZIP64;
/// Regular file, rw-r--r--.
const EXTERNAL_ATTR: u32 = 0o100_644 << 16;
const FLAG_UTF8: u16 = 1 << 11;
/// Longest name kept (file systems allow 255 bytes; the field holds 65535, leaving room for
/// collision prefixes).
const MAX_NAME_BYTES: usize = 1024;

impl ZipLayout {
    /// Lays out the archive of `entries`, in order. Deterministic: the same entries give the
    /// same bytes.
    pub fn new(entries: &[ZipEntry]) -> ZipLayout {
        let names = sanitize_names(entries);
        let mut out = Pieces::default();
        let mut central = Vec::new();
        let mut data = Vec::with_capacity(entries.len());
        for (track, (entry, name)) in entries.iter().zip(&names).enumerate() {
            let header_offset = out.offset;
            let (time, date) = dos_date_time(entry.mtime_unix);
            let flags = if name.is_ascii() { 0 } else { FLAG_UTF8 };
            let size64 = entry.size >= MAX32;
            let offset64 = header_offset >= MAX32;
            let size32 = if size64 {
                MAX32 as u32
            } else {
                entry.size as u32
            };

            let mut local_extra = Vec::new();
            if size64 {
                put16(&mut local_extra, ZIP64_EXTRA_ID);
                put16(&mut local_extra, 16);
                put64(&mut local_extra, entry.size); // uncompressed
                put64(&mut local_extra, entry.size); // compressed
            }
            let mut local = Vec::with_capacity(30 + name.len() + local_extra.len());
            put32(&mut local, LOCAL_HEADER_SIG);
            let common = HeaderFields {
                flags,
                time,
                date,
                crc32: entry.crc32,
                size32,
                name_len: name.len() as u16,
            };
            common.put(&mut local, size64, local_extra.len());
            local.extend_from_slice(name.as_bytes());
            local.extend_from_slice(&local_extra);
            out.literal(&local);
            let data_start = out.offset;
            out.data(track, entry.size);
            data.push(data_start..out.offset);

            let mut central_extra = Vec::new();
            if size64 || offset64 {
                let fields = 8 * (2 * usize::from(size64) + usize::from(offset64));
                put16(&mut central_extra, ZIP64_EXTRA_ID);
                put16(&mut central_extra, fields as u16);
                if size64 {
                    put64(&mut central_extra, entry.size); // uncompressed
                    put64(&mut central_extra, entry.size); // compressed
                }
                if offset64 {
                    put64(&mut central_extra, header_offset);
                }
            }
            let zip64 = size64 || offset64;
            put32(&mut central, CENTRAL_HEADER_SIG);
            put16(&mut central, MADE_BY);
            common.put(&mut central, zip64, central_extra.len());
            put16(&mut central, 0); // comment length
            put16(&mut central, 0); // disk number start
            put16(&mut central, 0); // internal attributes
            put32(&mut central, EXTERNAL_ATTR);
            put32(&mut central, header_offset.min(MAX32) as u32);
            central.extend_from_slice(name.as_bytes());
            central.extend_from_slice(&central_extra);
        }

        let count = entries.len() as u64;
        let cd_offset = out.offset;
        let cd_size = central.len() as u64;
        let zip64_end = count >= MAX16 || cd_offset >= MAX32 || cd_size >= MAX32;
        let mut tail = central;
        if zip64_end {
            let record_offset = cd_offset + cd_size;
            put32(&mut tail, ZIP64_END_SIG);
            put64(&mut tail, 44); // size of the rest of the record
            put16(&mut tail, MADE_BY);
            put16(&mut tail, VERSION_ZIP64);
            put32(&mut tail, 0); // this disk
            put32(&mut tail, 0); // disk with the central directory
            put64(&mut tail, count); // entries on this disk
            put64(&mut tail, count); // entries in total
            put64(&mut tail, cd_size);
            put64(&mut tail, cd_offset);
            put32(&mut tail, ZIP64_LOCATOR_SIG);
            put32(&mut tail, 0); // disk with the zip64 end record
            put64(&mut tail, record_offset);
            put32(&mut tail, 1); // total disks
        }
        put32(&mut tail, END_SIG);
        put16(&mut tail, 0); // this disk
        put16(&mut tail, 0); // disk with the central directory
        put16(&mut tail, count.min(MAX16) as u16);
        put16(&mut tail, count.min(MAX16) as u16);
        put32(&mut tail, cd_size.min(MAX32) as u32);
        put32(&mut tail, cd_offset.min(MAX32) as u32);
        put16(&mut tail, 0); // comment length
        out.literal(&tail);

        ZipLayout {
            len: out.offset,
            pieces: out.pieces,
            names,
            data,
            zip64_end,
        }
    }

    /// Size of the archive in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the archive is empty (never: even an empty zip has its end record).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces of the archive in order: literal bytes (local headers, central directory,
    /// zip64 records, end record) and track data. Contiguous from 0 to [`ZipLayout::len`].
    pub fn pieces(&self) -> &[ZipPiece] {
        &self.pieces
    }

    /// The sanitized name each track has in the archive, in track order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Archive byte range holding track `track`'s data (empty for an empty track), or `None`
    /// if there is no such track.
    pub fn track_range(&self, track: usize) -> Option<Range<u64>> {
        self.data.get(track).cloned()
    }

    /// Whether the archive ends with zip64 end records.
    pub fn is_zip64(&self) -> bool {
        self.zip64_end
    }

    /// Pieces overlapping `range` (clipped to the archive), each clipped: for a literal, the
    /// byte sub-slice; for data, the track index and the byte range inside the track.
    pub fn slice(&self, range: Range<u64>) -> impl Iterator<Item = ZipSlice<'_>> {
        let start = range.start;
        let end = range.end.min(self.len);
        let first = if start >= end {
            self.pieces.len()
        } else {
            self.pieces.partition_point(|p| p.end() <= start)
        };
        self.pieces[first..]
            .iter()
            .take_while(move |p| p.offset() < end)
            .map(move |p| {
                let from = start.max(p.offset()) - p.offset();
                let to = end.min(p.end()) - p.offset();
                match p {
                    ZipPiece::Literal { bytes, .. } => {
                        ZipSlice::Literal(&bytes[from as usize..to as usize])
                    }
                    ZipPiece::Data { track, .. } => ZipSlice::Data {
                        track: *track,
                        range: from..to,
                    },
                }
            })
    }

    /// The parts of `range` that are track data, as (track index, byte range within that
    /// track), in order: a delivered zip range credits exactly these track bytes.
    pub fn track_intervals(&self, range: Range<u64>) -> Vec<(usize, Range<u64>)> {
        self.slice(range)
            .filter_map(|s| match s {
                ZipSlice::Data { track, range } => Some((track, range)),
                ZipSlice::Literal(_) => None,
            })
            .collect()
    }
}

/// Appends pieces, merging consecutive literals and skipping empty data.
#[derive(Default)]
struct Pieces {
    pieces: Vec<ZipPiece>,
    offset: u64,
}

impl Pieces {
    fn literal(&mut self, bytes: &[u8]) {
        if let Some(ZipPiece::Literal { bytes: last, .. }) = self.pieces.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.pieces.push(ZipPiece::Literal {
                offset: self.offset,
                bytes: bytes.to_vec(),
            });
        }
        self.offset += bytes.len() as u64;
    }

    fn data(&mut self, track: usize, len: u64) {
        if len > 0 {
            self.pieces.push(ZipPiece::Data {
                offset: self.offset,
                track,
                len,
            });
            self.offset += len;
        }
    }
}

/// The fields a local file header and its central directory entry share, from "version needed
/// to extract" to "extra field length" (APPNOTE 4.3.7 and 4.3.12).
struct HeaderFields {
    flags: u16,
    time: u16,
    date: u16,
    crc32: u32,
    size32: u32,
    name_len: u16,
}

impl HeaderFields {
    fn put(&self, out: &mut Vec<u8>, zip64: bool, extra_len: usize) {
        put16(
            out,
            if zip64 {
                VERSION_ZIP64
            } else {
                VERSION_DEFAULT
            },
        );
        put16(out, self.flags);
        put16(out, 0); // stored
        put16(out, self.time);
        put16(out, self.date);
        put32(out, self.crc32);
        put32(out, self.size32); // compressed
        put32(out, self.size32); // uncompressed
        put16(out, self.name_len);
        put16(out, extra_len as u16);
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The archive names of `entries`: sanitized, then made unique (ignoring case, as the file
/// systems the archive is extracted on may) by prefixing the 1-based track number.
fn sanitize_names(entries: &[ZipEntry]) -> Vec<String> {
    let width = entries.len().to_string().len().max(2);
    let mut names: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| sanitize_name(&e.name, i + 1, width))
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in &names {
        *counts.entry(n.to_lowercase()).or_default() += 1;
    }
    for (i, n) in names.iter_mut().enumerate() {
        if counts[&n.to_lowercase()] > 1 {
            *n = format!("{:0width$} {n}", i + 1);
        }
    }
    // A prefixed name can still meet another track's name ("02 a" twice); prefix again until
    // unique: each round makes the name longer, so this ends.
    let mut seen = HashSet::new();
    for (i, n) in names.iter_mut().enumerate() {
        while !seen.insert(n.to_lowercase()) {
            *n = format!("{:0width$} {n}", i + 1);
        }
    }
    names
}

fn sanitize_name(name: &str, number: usize, width: usize) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            '/' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if s.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    if s.chars().all(|c| c == '.') {
        s = format!("track-{number:0width$}");
    }
    s
}

/// MS-DOS (time, date) of a Unix time, in UTC, clamped to the range the format can hold.
fn dos_date_time(unix: u64) -> (u16, u16) {
    const DOS_EPOCH: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    let unix = unix.max(DOS_EPOCH);
    let (year, month, day) = civil_from_days((unix / 86_400) as i64);
    if year > 2107 {
        return ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31);
    }
    let secs = unix % 86_400;
    let time = ((secs / 3600) << 11) | (((secs / 60) % 60) << 5) | ((secs % 60) / 2);
    let date = ((year - 1980) << 9) | (i64::from(month) << 5) | i64::from(day);
    (time as u16, date as u16)
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::path::Path;
    use std::process::Command;

    const GIB: u64 = 1 << 30;

    /// Bitwise CRC32 (IEEE), enough for test data.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    fn track_bytes(track: usize, size: u64) -> Vec<u8> {
        (0..size)
            .map(|i| (i.wrapping_mul(31) ^ (track as u64 * 7)) as u8)
            .collect()
    }

    fn entry(name: &str, data: &[u8]) -> ZipEntry {
        ZipEntry {
            name: name.into(),
            size: data.len() as u64,
            crc32: crc32(data),
            mtime_unix: 1_700_000_000,
        }
    }

    fn virtual_entry(name: &str, size: u64) -> ZipEntry {
        ZipEntry {
            name: name.into(),
            size,
            crc32: 0x1234_5678,
            mtime_unix: 1_700_000_000,
        }
    }

    fn assemble(layout: &ZipLayout, tracks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(layout.len() as usize);
        for s in layout.slice(0..layout.len()) {
            match s {
                ZipSlice::Literal(b) => out.extend_from_slice(b),
                ZipSlice::Data { track, range } => {
                    out.extend_from_slice(&tracks[track][range.start as usize..range.end as usize])
                }
            }
        }
        out
    }

    fn tool_available(program: &str) -> bool {
        Command::new(program).arg("-h").output().is_ok()
    }

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn dos_times_are_utc_and_clamped() {
        // 2023-11-14T22:13:20Z
        let (t, d) = dos_date_time(1_700_000_000);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (43, 11, 14));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (22, 13, 20));
        assert_eq!(dos_date_time(0), (0, (1 << 5) | 1));
        assert_eq!(dos_date_time(951_782_400).1, (20 << 9) | (2 << 5) | 29); // 2000-02-29
        assert_eq!(dos_date_time(u64::MAX).1, (127 << 9) | (12 << 5) | 31);
    }

    fn names_of(names: &[&str]) -> Vec<String> {
        let entries: Vec<ZipEntry> = names.iter().map(|n| virtual_entry(n, 1)).collect();
        ZipLayout::new(&entries).names().to_vec()
    }

    #[test]
    fn names_are_sanitized_and_made_unique() {
        assert_eq!(
            names_of(&["a/b.flac", "..", "", "dup.flac", "DUP.flac", "x\n", "c\\d", "ok"]),
            [
                "a_b.flac",
                "track-02",
                "track-03",
                "04 dup.flac",
                "05 DUP.flac",
                "x_",
                "c_d",
                "ok"
            ]
        );
        // A prefixed name that meets another track's name is prefixed again.
        assert_eq!(names_of(&["02 a", "a", "a"]), ["02 a", "02 02 a", "03 a"]);
    }

    #[test]
    fn same_entries_same_bytes() {
        let entries = vec![
            virtual_entry("a", 10),
            virtual_entry("b", 0),
            virtual_entry("c", 5),
        ];
        assert_eq!(ZipLayout::new(&entries), ZipLayout::new(&entries.clone()));
    }

    fn sample_album() -> (Vec<ZipEntry>, Vec<Vec<u8>>) {
        let specs: [(&str, u64); 7] = [
            ("01 Intro.flac", 1000),
            ("Überlied – café.flac", 70_000),
            ("silence.flac", 0),
            ("dup.flac", 17),
            ("dup.flac", 18),
            ("../../etc/passwd", 5),
            ("..", 3),
        ];
        let tracks: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(_, n))| track_bytes(i, n))
            .collect();
        let entries = specs
            .iter()
            .zip(&tracks)
            .map(|(&(name, _), data)| entry(name, data))
            .collect();
        (entries, tracks)
    }

    fn write_zip(dir: &Path, layout: &ZipLayout, tracks: &[Vec<u8>]) -> std::path::PathBuf {
        let path = dir.join("album.zip");
        std::fs::write(&path, assemble(layout, tracks)).unwrap();
        path
    }

    #[test]
    fn unzip_tests_the_archive() {
        if !Path::new("/usr/bin/unzip").exists() {
            eprintln!("skipped: /usr/bin/unzip is not installed");
            return;
        }
        let (entries, tracks) = sample_album();
        let layout = ZipLayout::new(&entries);
        let dir = tempfile::tempdir().unwrap();
        let zip = write_zip(dir.path(), &layout, &tracks);
        let out = Command::new("/usr/bin/unzip")
            .arg("-t")
            .arg(&zip)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "unzip -t failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("No errors detected"), "{text}");
        // Extract and compare the ASCII-named tracks byte for byte (unzip's handling of UTF-8
        // names depends on the locale; Python checks those below).
        let into = dir.path().join("out");
        let status = Command::new("/usr/bin/unzip")
            .args(["-q", "-o"])
            .arg(&zip)
            .arg("-d")
            .arg(&into)
            .status()
            .unwrap();
        assert!(status.success());
        for (name, data) in layout.names().iter().zip(&tracks) {
            if name.is_ascii() {
                assert_eq!(&std::fs::read(into.join(name)).unwrap(), data, "{name}");
            }
        }
    }

    const PY_CHECK: &str = r#"
import os, sys, zipfile
path, expected_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(path) as z:
    assert z.testzip() is None
    infos = z.infolist()
    got = [i.filename for i in infos]
    assert got == names, (got, names)
    for k, info in enumerate(infos):
        want = open(os.path.join(expected_dir, str(k)), "rb").read()
        assert z.read(info) == want, info.filename
        assert info.compress_type == zipfile.ZIP_STORED
print("ok", len(infos))
"#;

    #[test]
    fn python_zipfile_lists_and_extracts_the_exact_bytes() {
        if !tool_available("python3") {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let (entries, tracks) = sample_album();
        let layout = ZipLayout::new(&entries);
        let dir = tempfile::tempdir().unwrap();
        let zip = write_zip(dir.path(), &layout, &tracks);
        let expected = dir.path().join("expected");
        std::fs::create_dir(&expected).unwrap();
        for (k, t) in tracks.iter().enumerate() {
            std::fs::write(expected.join(k.to_string()), t).unwrap();
        }
        let out = Command::new("python3")
            .args(["-c", PY_CHECK])
            .arg(&zip)
            .arg(&expected)
            .args(layout.names())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python zipfile check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What a reader finds in the archive's records, read back with a parser of our own that
    /// only touches literal bytes (data may be virtual).
    #[derive(Debug)]
    struct Parsed {
        zip64_end: bool,
        end_count16: u16,
        end_cd_size32: u32,
        end_cd_offset32: u32,
        entries: Vec<ParsedEntry>,
    }

    #[derive(Debug)]
    struct ParsedEntry {
        name: String,
        size: u64,
        header_offset: u64,
        data_offset: u64,
        central_zip64: bool,
        local_zip64: bool,
        crc32: u32,
    }

    fn read_at(layout: &ZipLayout, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in layout.slice(offset..offset + len) {
            match s {
                ZipSlice::Literal(b) => out.extend_from_slice(b),
                ZipSlice::Data { .. } => panic!("record at {offset} runs into track data"),
            }
        }
        assert_eq!(
            out.len() as u64,
            len,
            "record at {offset} runs past the end"
        );
        out
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The zip64 extra field's values, if the extra block has one.
    fn zip64_extra(extra: &[u8]) -> Option<Vec<u64>> {
        let mut at = 0;
        while at + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, at), usize::from(u16_at(extra, at + 2)));
            if id == ZIP64_EXTRA_ID {
                let body = &extra[at + 4..at + 4 + len];
                return Some(body.chunks(8).map(|c| u64_at(c, 0)).collect());
            }
            at += 4 + len;
        }
        None
    }

    fn parse(layout: &ZipLayout) -> Parsed {
        let len = layout.len();
        let end = read_at(layout, len - 22, 22);
        assert_eq!(u32_at(&end, 0), END_SIG);
        let (count16, size32, offset32) = (u16_at(&end, 10), u32_at(&end, 12), u32_at(&end, 16));
        assert_eq!(u16_at(&end, 8), count16);
        let locator = (len >= 42).then(|| read_at(layout, len - 42, 20));
        let zip64_end = locator
            .as_ref()
            .is_some_and(|l| u32_at(l, 0) == ZIP64_LOCATOR_SIG);
        let (count, cd_size, cd_offset) = if zip64_end {
            let locator = locator.unwrap();
            assert_eq!(u32_at(&locator, 16), 1, "total disks");
            let at = u64_at(&locator, 8);
            assert_eq!(
                at,
                len - 42 - 56,
                "zip64 end record right before the locator"
            );
            let rec = read_at(layout, at, 56);
            assert_eq!(u32_at(&rec, 0), ZIP64_END_SIG);
            assert_eq!(u64_at(&rec, 4), 44);
            assert_eq!(u64_at(&rec, 24), u64_at(&rec, 32));
            (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48))
        } else {
            (u64::from(count16), u64::from(size32), u64::from(offset32))
        };
        let tail_start = len - 22 - if zip64_end { 76 } else { 0 };
        assert_eq!(
            cd_offset + cd_size,
            tail_start,
            "central directory ends at the end records"
        );
        let cd = read_at(layout, cd_offset, cd_size);
        let mut entries = Vec::new();
        let mut at = 0;
        for _ in 0..count {
            assert_eq!(u32_at(&cd, at), CENTRAL_HEADER_SIG);
            let (n, e, c) = (
                usize::from(u16_at(&cd, at + 28)),
                usize::from(u16_at(&cd, at + 30)),
                usize::from(u16_at(&cd, at + 32)),
            );
            let name = String::from_utf8(cd[at + 46..at + 46 + n].to_vec()).unwrap();
            let extra = &cd[at + 46 + n..at + 46 + n + e];
            let mut values = zip64_extra(extra).unwrap_or_default().into_iter();
            let mut field = |v32: u32| {
                if u64::from(v32) == MAX32 {
                    values
                        .next()
                        .expect("zip64 extra field for a 0xFFFFFFFF value")
                } else {
                    u64::from(v32)
                }
            };
            let size = field(u32_at(&cd, at + 24));
            let csize = field(u32_at(&cd, at + 20));
            let header_offset = field(u32_at(&cd, at + 42));
            assert_eq!(size, csize);
            assert!(
                values.next().is_none(),
                "zip64 extra has only the fields needed"
            );
            let crc32 = u32_at(&cd, at + 16);
            // The local header agrees.
            let local = read_at(layout, header_offset, 30);
            assert_eq!(u32_at(&local, 0), LOCAL_HEADER_SIG);
            let (ln, le) = (u64::from(u16_at(&local, 26)), u64::from(u16_at(&local, 28)));
            let rest = read_at(layout, header_offset + 30, ln + le);
            assert_eq!(&rest[..ln as usize], name.as_bytes());
            let local_extra = zip64_extra(&rest[ln as usize..]);
            let local_size = match &local_extra {
                Some(v) => {
                    assert_eq!(u32_at(&local, 22), MAX32 as u32);
                    assert_eq!(v.len(), 2, "local zip64 extra has both sizes");
                    v[0]
                }
                None => u64::from(u32_at(&local, 22)),
            };
            assert_eq!(local_size, size);
            assert_eq!(u32_at(&local, 14), crc32);
            assert_eq!(u16_at(&local, 6), u16_at(&cd, at + 8), "same flags");
            entries.push(ParsedEntry {
                name,
                size,
                header_offset,
                data_offset: header_offset + 30 + ln + le,
                central_zip64: e > 0,
                local_zip64: local_extra.is_some(),
                crc32,
            });
            at += 46 + n + e + c;
        }
        assert_eq!(at as u64, cd_size);
        Parsed {
            zip64_end,
            end_count16: count16,
            end_cd_size32: size32,
            end_cd_offset32: offset32,
            entries,
        }
    }

    fn check_against_layout(layout: &ZipLayout, entries: &[ZipEntry]) -> Parsed {
        let parsed = parse(layout);
        assert_eq!(parsed.zip64_end, layout.is_zip64());
        assert_eq!(parsed.entries.len(), entries.len());
        for (i, (p, e)) in parsed.entries.iter().zip(entries).enumerate() {
            assert_eq!(p.name, layout.names()[i]);
            assert_eq!(p.size, e.size);
            assert_eq!(p.crc32, e.crc32);
            let data = layout.track_range(i).unwrap();
            assert_eq!(p.data_offset..p.data_offset + p.size, data);
            assert_eq!(p.local_zip64, e.size >= MAX32);
            assert_eq!(p.central_zip64, e.size >= MAX32 || p.header_offset >= MAX32);
        }
        parsed
    }

    #[test]
    fn small_albums_have_no_zip64_records() {
        let (entries, _) = sample_album();
        let layout = ZipLayout::new(&entries);
        let parsed = check_against_layout(&layout, &entries);
        assert!(!parsed.zip64_end);
        assert!(parsed
            .entries
            .iter()
            .all(|e| !e.central_zip64 && !e.local_zip64));
        assert_eq!(usize::from(parsed.end_count16), entries.len());
        let empty = ZipLayout::new(&[]);
        assert_eq!(empty.len(), 22);
        check_against_layout(&empty, &[]);
    }

    #[test]
    fn albums_past_4_gib_get_zip64_exactly_where_needed() {
        // Offsets past 4 GiB, sizes below: only the third header's offset needs zip64.
        let entries = vec![
            virtual_entry("a.flac", 3 * GIB),
            virtual_entry("b.flac", 2 * GIB),
            virtual_entry("c.flac", 10),
        ];
        let layout = ZipLayout::new(&entries);
        let parsed = check_against_layout(&layout, &entries);
        assert!(parsed.zip64_end);
        let flags: Vec<(bool, bool)> = parsed
            .entries
            .iter()
            .map(|e| (e.local_zip64, e.central_zip64))
            .collect();
        assert_eq!(flags, [(false, false), (false, false), (false, true)]);
        assert_eq!(parsed.end_cd_offset32, MAX32 as u32);
        assert_eq!(usize::from(parsed.end_count16), 3, "the count still fits");
        assert!(parsed.end_cd_size32 < 1000);
        assert_eq!(layout.track_range(2).unwrap().start, 5 * GIB + 3 * (30 + 6));

        // One track of 0xFFFFFFFF bytes: the size itself is the sentinel, so zip64 sizes.
        for (size, size64) in [(MAX32 - 1, false), (MAX32, true), (5 * GIB, true)] {
            let entries = vec![virtual_entry("big", size)];
            let layout = ZipLayout::new(&entries);
            let parsed = check_against_layout(&layout, &entries);
            assert_eq!(parsed.entries[0].local_zip64, size64, "size {size}");
            assert!(parsed.zip64_end, "central directory starts past 0xFFFFFFFF");
        }
    }

    #[test]
    fn the_central_directory_offset_boundary_is_exact() {
        // One entry named "x": local header 31 bytes, so data of size s puts the central
        // directory at 31 + s.
        for (cd_offset, zip64) in [(MAX32 - 1, false), (MAX32, true)] {
            let entries = vec![virtual_entry("x", cd_offset - 31)];
            let layout = ZipLayout::new(&entries);
            let parsed = check_against_layout(&layout, &entries);
            assert_eq!(parsed.zip64_end, zip64, "central directory at {cd_offset}");
            let expected_len = cd_offset + 47 + 22 + if zip64 { 76 } else { 0 };
            assert_eq!(layout.len(), expected_len);
        }
    }

    #[test]
    fn the_entry_count_boundary_is_exact() {
        for (count, zip64) in [(0xFFFE, false), (0xFFFF, true)] {
            let entries: Vec<ZipEntry> = (0..count)
                .map(|i| virtual_entry(&format!("{i}"), 1))
                .collect();
            let layout = ZipLayout::new(&entries);
            let parsed = check_against_layout(&layout, &entries);
            assert_eq!(parsed.zip64_end, zip64, "{count} entries");
            assert_eq!(parsed.end_count16, 0xFFFF.min(count) as u16);
        }
    }

    /// A 4 GiB+ archive as a sparse file: Python's zipfile and unzip read its zip64 records,
    /// list the entries and extract the small track that sits past 4 GiB (the big track's data
    /// is a hole, never read).
    #[test]
    fn readers_open_a_sparse_zip64_archive() {
        let tail = b"the track after four gibibytes\n".to_vec();
        let entries = vec![
            virtual_entry("hole.bin", 4 * GIB + 100),
            entry("tail.txt", &tail),
        ];
        let layout = ZipLayout::new(&entries);
        assert!(layout.is_zip64());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.zip");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(layout.len()).unwrap();
        for p in layout.pieces() {
            let bytes: &[u8] = match p {
                ZipPiece::Literal { bytes, .. } => bytes,
                ZipPiece::Data { track: 1, .. } => &tail,
                ZipPiece::Data { .. } => continue,
            };
            f.seek(SeekFrom::Start(p.offset())).unwrap();
            f.write_all(bytes).unwrap();
        }
        drop(f);
        if tool_available("python3") {
            let script = r#"
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
a, b = z.infolist()
assert (a.filename, a.file_size, a.header_offset) == ("hole.bin", 4 * 2**30 + 100, 0), a
assert b.filename == "tail.txt" and b.header_offset > 2**32, b
assert z.read(b) == b"the track after four gibibytes\n"
print("ok")
"#;
            let out = Command::new("python3")
                .args(["-c", script])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            eprintln!("skipped the Python half: python3 is not installed");
        }
        if Path::new("/usr/bin/unzip").exists() {
            let out = Command::new("/usr/bin/unzip")
                .args(["-p"])
                .arg(&path)
                .arg("tail.txt")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, tail);
        } else {
            eprintln!("skipped the unzip half: /usr/bin/unzip is not installed");
        }
    }

    proptest! {
        #[test]
        fn slices_and_track_intervals_match_the_assembled_bytes(
            sizes in prop::collection::vec(0..300u64, 0..6),
            name_picks in prop::collection::vec(0..3usize, 6),
            ranges in prop::collection::vec((0..3000u64, 0..3000u64), 1..8),
        ) {
            let tracks: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(i, &n)| track_bytes(i, n)).collect();
            let entries: Vec<ZipEntry> = tracks
                .iter()
                .zip(&name_picks)
                .map(|(t, &k)| entry(["a", "b", "é"][k], t))
                .collect();
            let layout = ZipLayout::new(&entries);
            // Contiguous, non-empty, covering 0..len.
            let mut at = 0;
            for p in layout.pieces() {
                prop_assert_eq!(p.offset(), at);
                prop_assert!(!p.is_empty());
                at = p.end();
            }
            prop_assert_eq!(at, layout.len());
            let whole = assemble(&layout, &tracks);
            prop_assert_eq!(whole.len() as u64, layout.len());
            for (a, b) in ranges {
                let (start, end) = (a.min(b), a.max(b));
                let mut got = Vec::new();
                for s in layout.slice(start..end) {
                    match s {
                        ZipSlice::Literal(b) => {
                            prop_assert!(!b.is_empty());
                            got.extend_from_slice(b);
                        }
                        ZipSlice::Data { track, range } => {
                            prop_assert!(range.start < range.end);
                            got.extend_from_slice(&tracks[track][range.start as usize..range.end as usize]);
                        }
                    }
                }
                let clipped_end = end.min(layout.len());
                let want = if start < clipped_end { &whole[start as usize..clipped_end as usize] } else { &[][..] };
                prop_assert_eq!(&got[..], want);
                // Track intervals: the data pieces clipped to the range, and nothing else.
                let mut expected = Vec::new();
                for (i, _) in entries.iter().enumerate() {
                    let data = layout.track_range(i).unwrap();
                    let (s, e) = (data.start.max(start), data.end.min(end));
                    if s < e {
                        expected.push((i, s - data.start..e - data.start));
                    }
                }
                prop_assert_eq!(layout.track_intervals(start..end), expected);
            }
        }
    }
}
