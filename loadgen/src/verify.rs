//! Exact-bytes verification with bounded memory, for downloads assembled out of order.
//!
//! SHA-256 is a stream: the whole-file digest needs the bytes in order, but a download manager
//! receives 40 ranges at once, so an in-order hash would have to buffer up to the whole file. So:
//!
//! 1. Before the clock starts, one plain GET of the file (the *reference fetch*) is streamed through
//!    SHA-256 and, at the same time, through one SHA-256 per 64 KiB block. If the whole digest equals
//!    `--sha256`, the block digests are the true content's ([`BlockList`]).
//! 2. Every range of every download is cut at block boundaries ([`crate::manager::Plan`] aligns
//!    splits), so each connection hashes its bytes block by block as they arrive
//!    ([`BlockHasher`]) and compares each finished block with the list.
//!
//! A download whose every block matched has exactly the bytes whose SHA-256 is `--sha256`
//! (second-preimage resistance of SHA-256). Memory bound: the shared list is 32 bytes per 64 KiB
//! of file (512 KiB for 1 GiB, once per run), plus one SHA-256 state (~112 bytes) per connection
//! slot. Nothing else is kept; no body byte is stored. A resumed range keeps its slot's state, so
//! resumption continues the block it was in.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::http::{parse_head, BodyDecoder, HeadParse};
use crate::target::{write_get, Url};

/// Block size of the verification list; range splits are aligned to it.
pub const BLOCK: u64 = 64 * 1024;

/// The SHA-256 of every block of the reference content.
#[derive(Clone, Debug)]
pub struct BlockList {
    pub size: u64,
    digests: Vec<[u8; 32]>,
    /// Whether the reference content's whole digest matched `--sha256`. When it did not, every
    /// download that matches the list has the wrong bytes too and counts as a hash mismatch.
    pub trusted: bool,
}

impl BlockList {
    /// Build from content read in order (tests and the reference fetch).
    pub fn from_reader(mut r: impl Read, expected: &[u8; 32]) -> std::io::Result<BlockList> {
        let mut b = Builder::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            b.feed(&buf[..n]);
        }
        Ok(b.finish(expected))
    }

    fn digest(&self, block: u64) -> Option<&[u8; 32]> {
        self.digests.get(block as usize)
    }
}

/// Streams content in order into a whole-file digest and block digests.
#[derive(Default)]
pub struct Builder {
    whole: Sha256,
    block: Sha256,
    in_block: u64,
    size: u64,
    digests: Vec<[u8; 32]>,
}

impl Builder {
    /// Add the next bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = ((BLOCK - self.in_block) as usize).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take as u64;
            data = &data[take..];
            if self.in_block == BLOCK {
                self.digests.push(self.block.finalize_reset().into());
                self.in_block = 0;
            }
        }
    }

    /// The whole digest so far is final; compare and build the list.
    pub fn finish(mut self, expected: &[u8; 32]) -> BlockList {
        if self.in_block > 0 {
            self.digests.push(self.block.finalize_reset().into());
        }
        let whole: [u8; 32] = self.whole.finalize().into();
        BlockList {
            size: self.size,
            digests: self.digests,
            trusted: &whole == expected,
        }
    }
}

/// The hash state of one connection slot: the bytes of the current block received so far.
#[derive(Clone)]
pub struct BlockHasher {
    sha: Sha256,
    /// Next offset this hasher expects.
    at: u64,
}

impl BlockHasher {
    /// A hasher for a range starting at `at`, which must be a block boundary.
    pub fn starting_at(at: u64) -> BlockHasher {
        debug_assert_eq!(at % BLOCK, 0, "ranges are split at block boundaries");
        BlockHasher {
            sha: Sha256::new(),
            at,
        }
    }

    /// Next offset expected.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Feed the bytes at [`BlockHasher::position`]; `false` as soon as a finished block differs
    /// from the list (or lies past its end).
    pub fn feed(&mut self, list: &BlockList, mut data: &[u8]) -> bool {
        let mut ok = true;
        while !data.is_empty() {
            let block = self.at / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(list.size.max(self.at));
            let take = ((block_end - self.at) as usize).min(data.len());
            if take == 0 {
                // Bytes past the reference's end.
                return false;
            }
            self.sha.update(&data[..take]);
            self.at += take as u64;
            data = &data[take..];
            if self.at == block_end {
                let got: [u8; 32] = self.sha.finalize_reset().into();
                ok &= list.digest(block) == Some(&got);
            }
        }
        ok
    }
}

/// Parse `--sha256` hex.
pub fn parse_sha256(hex_str: &str) -> anyhow::Result<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).map_err(|e| anyhow::anyhow!("--sha256 is not hex: {e}"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("--sha256 must be 64 hex digits (32 bytes)"))
}

/// A blocking stream, clear or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// What the reference fetch found.
pub struct Reference {
    pub list: BlockList,
    pub took: Duration,
}

/// Where the reference fetch goes: the server's address, the local source address, and TLS for
/// `https://`.
pub struct Peer<'a> {
    pub addr: SocketAddr,
    pub source: Option<std::net::IpAddr>,
    pub tls: Option<&'a crate::tls::Tls>,
}

/// GET the whole file once, in order, and build the block list. Bounded by `timeout` for each
/// read and by `deadline` overall.
pub fn reference_fetch(
    peer: Peer<'_>,
    url: &Url,
    auth: &str,
    expected: &[u8; 32],
    timeout: Duration,
    deadline: Instant,
) -> anyhow::Result<Reference> {
    let Peer { addr, source, tls } = peer;
    let started = Instant::now();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(src) = source {
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    sock.connect_timeout(&addr.into(), timeout)?;
    let plain: TcpStream = sock.into();
    plain.set_read_timeout(Some(timeout))?;
    plain.set_write_timeout(Some(timeout))?;
    let mut s: Box<dyn ReadWrite> = match tls {
        Some(t) => Box::new(crate::tls::blocking(t, plain)?),
        None => Box::new(plain),
    };
    let mut req = Vec::new();
    write_get(&mut req, url, &url.host_header(), auth, None, false);
    s.write_all(&req)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head_buf = Vec::new();
    let (head, mut leftover) = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            anyhow::bail!("connection closed before a response head");
        }
        head_buf.extend_from_slice(&buf[..n]);
        match parse_head(&head_buf) {
            HeadParse::Complete(h) => {
                let rest = head_buf.split_off(h.len);
                break (h, rest);
            }
            HeadParse::Partial => continue,
            HeadParse::Invalid => anyhow::bail!("unparsable response head"),
        }
    };
    if head.status != 200 {
        anyhow::bail!("status {} for a plain GET", head.status);
    }
    let mut dec = BodyDecoder::for_head(&head);
    let mut b = Builder::default();
    loop {
        let mut off = 0;
        while off < leftover.len() && !dec.is_done() {
            let step = dec
                .step(&leftover[off..])
                .map_err(|_| anyhow::anyhow!("bad chunked framing"))?;
            b.feed(&leftover[off + step.data.start..off + step.data.end]);
            off += step.consumed;
        }
        if dec.is_done() || Instant::now() >= deadline {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            if dec.until_close() {
                break;
            }
            anyhow::bail!("body ended early");
        }
        leftover.clear();
        leftover.extend_from_slice(&buf[..n]);
    }
    if !dec.is_done() && !dec.until_close() {
        anyhow::bail!("run deadline reached during the reference fetch");
    }
    Ok(Reference {
        list: b.finish(expected),
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sha(d: &[u8]) -> [u8; 32] {
        Sha256::digest(d).into()
    }

    #[test]
    fn ranges_in_any_order_verify() {
        let data = content(5 * BLOCK as usize + 123);
        let list = BlockList::from_reader(&data[..], &sha(&data)).unwrap();
        assert!(list.trusted);
        assert_eq!(list.size, data.len() as u64);
        // Three ranges fed out of order, in odd piece sizes.
        let cuts = [0u64, 2 * BLOCK, 3 * BLOCK, data.len() as u64];
        for r in [2usize, 0, 1] {
            let (a, b) = (cuts[r], cuts[r + 1]);
            let mut h = BlockHasher::starting_at(a);
            for piece in data[a as usize..b as usize].chunks(1000) {
                assert!(h.feed(&list, piece));
            }
            assert_eq!(h.position(), b);
        }
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let data = content(3 * BLOCK as usize);
        let list = BlockList::from_reader(&data[..], &sha(&data)).unwrap();
        let mut bad = data.clone();
        bad[BLOCK as usize + 5] ^= 1;
        let mut h = BlockHasher::starting_at(0);
        let results: Vec<bool> = bad.chunks(4096).map(|p| h.feed(&list, p)).collect();
        let ok = results.iter().all(|r| *r);
        assert!(!ok);
    }

    #[test]
    fn bytes_past_the_end_fail() {
        let data = content(100);
        let list = BlockList::from_reader(&data[..], &sha(&data)).unwrap();
        let mut h = BlockHasher::starting_at(0);
        assert!(h.feed(&list, &data));
        assert!(!h.feed(&list, b"x"));
    }

    #[test]
    fn untrusted_when_reference_differs() {
        let data = content(10);
        let list = BlockList::from_reader(&data[..], &[0u8; 32]).unwrap();
        assert!(!list.trusted);
        assert!(parse_sha256("zz").is_err());
        assert_eq!(parse_sha256(&hex::encode(sha(b"x"))).unwrap(), sha(b"x"));
    }
}
