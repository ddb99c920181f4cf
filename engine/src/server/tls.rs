//! HTTPS served by weir itself: the certificates ([`Certificates`], reloaded on SIGHUP and
//! `POST /tls/reload`), and the TLS layer between a connection's state machine and its socket
//! ([`TlsSession`]).
//!
//! # Where TLS sits
//! A TLS connection is the same [`Conn`](super::conn::Conn) with a session: ciphertext the
//! socket received goes through [`TlsSession::receive`] and only the plaintext reaches the
//! HTTP parser; a send encrypts the next bytes of the response (the head, literals, and file
//! bytes read with `pread`, never from the mapping: reading a mapped page past the end of a
//! truncated file is SIGBUS) into the session's ciphertext buffer, and the driver sends that
//! buffer like any other iovec. Nothing else changes for the drivers.
//!
//! # Memory
//! Plaintext is staged in the worker's shared scratch buffer. A connection owns only the
//! ciphertext the kernel has not taken yet: records are at most [`RECORD_PLAIN`] bytes of
//! plaintext (8 KiB with their overhead). A connection encrypts up to [`BATCH_PLAIN`] bytes per
//! send only while everything it queued before has left the socket (`SIOCOUTQNSD` is zero: the
//! socket has room, and what is in flight will be acknowledged and free more); once bytes wait
//! unsent, or a send was short, it encrypts one record at a time and gives its batch-sized
//! buffer back. A stalled download therefore holds at most one record (< 8 KiB) here.
//!
//! # Delivery
//! The client's TCP acknowledges ciphertext. Each batch of records produced is recorded in the
//! connection's stream map as the plaintext it carries (head bytes as overhead, content as
//! content) followed by the records' overhead, and its end offset is kept ([`RecordEnds`]). The
//! credit policy reads acknowledgements through [`AckView`], which rounds them down to the end
//! of the last whole batch acknowledged: a content byte counts only once the entire record
//! carrying it reached the client. Handshake bytes, tickets and alerts are overhead.
//!
//! # kTLS
//! With the kernel's `tls` module the kernel encrypts: after the handshake the session's
//! secrets would be handed to the socket (`setsockopt(SOL_TLS)`), the connection would drop
//! its [`TlsSession`] for sending and take the plain path again (sendmsg from the mapping,
//! sendfile), and [`AckView`] would round to the kernel's record size. The seam is
//! [`TlsSession::encrypt`]: the only place ciphertext is made.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::ServerConfig;

use crate::completion::AckState;
use crate::config::TlsListen;

use super::socket::ConnSocket;

/// Plaintext bytes per record: the record with its header and tag stays within 8 KiB.
pub const RECORD_PLAIN: usize = 8 * 1024 - 64;
/// Most plaintext one send encrypts when the socket took the whole previous send.
pub const BATCH_PLAIN: usize = 7 * RECORD_PLAIN;

/// The server's certificate and key, as every new handshake uses them.
pub struct Certificates {
    files: TlsListen,
    current: RwLock<Arc<ServerConfig>>,
}

impl Certificates {
    /// Load the PEM files named in `files`; an error names the file and what is wrong.
    pub fn load(files: &TlsListen) -> anyhow::Result<Certificates> {
        let config = server_config(&files.cert, &files.key)?;
        Ok(Certificates {
            files: files.clone(),
            current: RwLock::new(config),
        })
    }

    /// The configuration a new handshake uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the files again (SIGHUP, `POST /tls/reload`): new handshakes use them, open
    /// connections go on with what they negotiated. A file that does not load is refused with
    /// a log line and the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        match server_config(&self.files.cert, &self.files.key) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded: new handshakes use it");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "TLS certificate reload refused; the certificate in use stays");
                Err(e)
            }
        }
    }
}

/// A rustls server configuration for the chain in `cert` and the key in `key`: TLS 1.3 and
/// 1.2, ALPN `http/1.1`.
fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no CERTIFICATE in it (expected a PEM chain, leaf first)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: no usable PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and the key do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: every connection makes a full handshake. rustls would otherwise
    // keep a per-process session cache and send two TLS 1.3 tickets after every handshake,
    // work each new connection pays for and no client can use across workers, restarts or
    // hosts. Resumption worth having needs shared, rotated ticket keys: not done yet.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Stream offsets where batches of records end, for rounding acknowledgements down to whole
/// records. Interior mutability: the credit policy reads acknowledgements through a shared
/// reference ([`AckView`]), and rounding drops the ends it passed.
#[derive(Default)]
pub struct RecordEnds {
    /// Ends not yet passed by an acknowledgement, oldest first.
    ends: RefCell<VecDeque<u64>>,
    /// The last end an acknowledgement passed.
    floor: Cell<u64>,
}

/// Ends kept before every other one is dropped (rounding then only gets coarser: a credit may
/// come one batch later, never earlier).
const MAX_ENDS: usize = 256;

impl RecordEnds {
    /// A batch of records ends at stream offset `end`.
    pub fn push(&self, end: u64) {
        let mut ends = self.ends.borrow_mut();
        if ends.len() >= MAX_ENDS {
            let mut i = 0;
            ends.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        ends.push_back(end);
    }

    /// The end of the last whole batch within the first `acked` stream bytes.
    pub fn round_down(&self, acked: u64) -> u64 {
        let mut ends = self.ends.borrow_mut();
        while let Some(&e) = ends.front() {
            if e > acked {
                break;
            }
            self.floor.set(e);
            ends.pop_front();
        }
        self.floor.get()
    }
}

/// The socket as the credit policy sees it: on a TLS connection, acknowledgements rounded
/// down to whole records ([`RecordEnds`]); on a plain one, the socket itself. Only the queries
/// are meaningful: the policy never receives or configures through it.
pub struct AckView<'a, S> {
    pub sock: &'a S,
    pub ends: Option<&'a RecordEnds>,
}

impl<S: ConnSocket> ConnSocket for AckView<'_, S> {
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn shutdown_write(&mut self) {}

    fn set_send_buffer(&mut self, _bytes: usize) {}

    fn rtt(&self) -> io::Result<Duration> {
        self.sock.rtt()
    }

    fn acked(&self) -> io::Result<AckState> {
        let mut a = self.sock.acked()?;
        if let Some(ends) = self.ends {
            a.bytes_acked = ends.round_down(a.bytes_acked);
        }
        Ok(a)
    }

    fn unsent(&self) -> io::Result<u32> {
        self.sock.unsent()
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.sock.peer_ip()
    }

    /// A plain connection's stream offsets are the socket's, so after a crash the kernel's
    /// count of its acknowledged bytes maps onto content; a TLS connection's are ciphertext
    /// (records the next process cannot rebuild), so it reports none and a crash leaves its
    /// unacknowledged bytes to the evidence rule.
    fn cookie(&self) -> Option<u64> {
        match self.ends {
            None => self.sock.cookie(),
            Some(_) => None,
        }
    }
}

/// One connection's TLS state: the rustls session and the ciphertext not yet sent.
pub struct TlsSession {
    conn: ServerConnection,
    /// INVARIANT: not modified while a send of `out[pos..]` is in flight: only
    /// [`TlsSession::sent`] (on its completion) and the producing calls, which the connection
    /// makes only when nothing is pending, change it.
    out: Vec<u8>,
    pos: usize,
    /// The socket took less than the whole last send: encrypt one record at a time.
    pub short: bool,
    /// close_notify was queued (the last response on this connection is done).
    pub notified: bool,
    /// Nothing was received yet.
    fresh: bool,
    pub ends: RecordEnds,
}

/// What [`TlsSession::receive`] learnt.
pub struct Received {
    /// The client sent close_notify.
    pub closed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Option<Box<TlsSession>> {
        match ServerConnection::new(config) {
            Ok(conn) => Some(Box::new(TlsSession {
                conn,
                out: Vec::new(),
                pos: 0,
                short: false,
                notified: false,
                fresh: true,
                ends: RecordEnds::default(),
            })),
            Err(e) => {
                tracing::error!(error = %e, "TLS session refused");
                None
            }
        }
    }

    /// Ciphertext from the socket: decrypt it, appending the plaintext to `plain`. An error
    /// (not TLS, a bad record, a failed handshake) ends the connection.
    pub fn receive(&mut self, mut data: &[u8], plain: &mut Vec<u8>) -> Result<Received, String> {
        let mut closed = false;
        while !data.is_empty() {
            match self.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            let state = self.conn.process_new_packets().map_err(|e| e.to_string())?;
            let mut n = state.plaintext_bytes_to_read();
            closed |= state.peer_has_closed();
            while n > 0 {
                let at = plain.len();
                plain.resize(at + n, 0);
                match self.conn.reader().read(&mut plain[at..]) {
                    Ok(got) => {
                        plain.truncate(at + got);
                        n -= got.min(n);
                        if got == 0 {
                            break;
                        }
                    }
                    Err(_) => {
                        plain.truncate(at);
                        break;
                    }
                }
            }
        }
        Ok(Received { closed })
    }

    /// Whether `data`, the first bytes of the connection, are a plain-HTTP request (a TLS
    /// record starts with a content type, 20 to 24, never a letter): it is answered 400 in
    /// plain text, as a TLS alert would mean nothing to that client.
    pub fn plain_http_first(&mut self, data: &[u8]) -> bool {
        let fresh = std::mem::replace(&mut self.fresh, false);
        fresh && data.first().is_some_and(u8::is_ascii_uppercase)
    }

    /// Handshake done: application data may flow.
    pub fn ready(&self) -> bool {
        !self.conn.is_handshaking()
    }

    /// Ciphertext waiting to be sent.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.pos..]
    }

    /// Whether rustls has records of its own to send (handshake, tickets, alerts).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Move rustls' own records (handshake, tickets, alerts) into the ciphertext buffer;
    /// returns their length (overhead for the credit policy).
    pub fn take_records(&mut self) -> u64 {
        let before = self.out.len();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
        (self.out.len() - before) as u64
    }

    /// Encrypt `plain` into records appended to the ciphertext buffer; returns the ciphertext
    /// length. (The kTLS seam: with a kernel-TLS socket nothing would be encrypted here.)
    pub fn encrypt(&mut self, plain: &[u8]) -> u64 {
        let before = self.out.len();
        for rec in plain.chunks(RECORD_PLAIN) {
            let mut w = self.conn.writer();
            let _ = w.write_all(rec);
            while self.conn.wants_write() {
                if self.conn.write_tls(&mut self.out).is_err() {
                    break;
                }
            }
        }
        (self.out.len() - before) as u64
    }

    /// Queue close_notify (the server ends the connection after its last response, so the
    /// client can tell the end from a truncation); returns the ciphertext length.
    pub fn close_notify(&mut self) -> u64 {
        self.notified = true;
        self.conn.send_close_notify();
        self.take_records()
    }

    /// The kernel took `n` bytes of [`TlsSession::pending`].
    /// (Called when the send completed: nothing else reads the buffer then, so it may move.)
    pub fn sent(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.out.len());
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
            if self.short && self.out.capacity() > 2 * RECORD_PLAIN {
                // Slow going: the next sends are single records; keep no batch-sized buffer.
                self.out = Vec::new();
            }
        } else if self.short
            && self.out.capacity() > 2 * RECORD_PLAIN
            && self.out.len() - self.pos <= RECORD_PLAIN
        {
            // The socket filled up inside a batch: keep only the rest (a stalled download
            // then holds less than one record), not the batch-sized buffer.
            self.out = self.out[self.pos..].to_vec();
            self.pos = 0;
        }
    }

    /// Nothing pending and nothing being sent: give the ciphertext buffer back.
    pub fn release_buffers(&mut self) {
        if self.pos == 0 && self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// Plaintext the next send may encrypt.
    pub fn batch(&self) -> usize {
        if self.short {
            RECORD_PLAIN
        } else {
            BATCH_PLAIN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::credit::{ConnCredit, CreditBatch};
    use crate::server::socket::FakeSocket;
    use crate::server::stats::WorkerStats;

    fn acked(n: u64) -> FakeSocket {
        FakeSocket {
            ack: Some(AckState {
                bytes_acked: n,
                window: Some(65_535),
                peer_ended: false,
            }),
            ..FakeSocket::default()
        }
    }

    /// Through [`AckView`], content is credited only once the whole batch of records carrying
    /// it is acknowledged: handshake bytes and record overhead are overhead.
    #[test]
    fn content_counts_only_once_its_whole_record_is_acknowledged() {
        let ends = RecordEnds::default();
        let mut cc = ConnCredit::default();
        let mut batch = CreditBatch::new(None);
        let stats = WorkerStats::default();
        let (user, item): (Arc<str>, Arc<str>) = ("alice".into(), "song".into());
        let sock = acked(0);
        let view = AckView {
            sock: &sock,
            ends: Some(&ends),
        };
        // 3000 handshake bytes, then a response of 14,000 content bytes in two batches.
        cc.start_response(&view, &batch, 3000, 14_000, None, std::time::Instant::now());
        cc.record_overhead(200); // head
        cc.record_content(&user, &item, 0, 0, 7000);
        cc.record_overhead(100); // record headers and tags
        ends.push(10_300);
        cc.record_content(&user, &item, 0, 7000, 7000);
        cc.record_overhead(100);
        ends.push(17_400);
        let credited = |cc: &mut ConnCredit, batch: &mut CreditBatch, n: u64| {
            let sock = acked(n);
            let view = AckView {
                sock: &sock,
                ends: Some(&ends),
            };
            cc.account(&view, &stats, batch, false, false, false);
            batch
                .pending()
                .iter()
                .map(|c| (c.range.start, c.range.end))
                .collect::<Vec<_>>()
        };
        assert!(credited(&mut cc, &mut batch, 3000 + 200 + 5000).is_empty());
        assert!(
            credited(&mut cc, &mut batch, 10_299).is_empty(),
            "one byte short"
        );
        assert_eq!(credited(&mut cc, &mut batch, 10_300), [(0, 7000)]);
        assert_eq!(credited(&mut cc, &mut batch, 17_399), [(0, 7000)]);
        // The FIN's sequence number on top.
        assert_eq!(
            credited(&mut cc, &mut batch, 17_401),
            [(0, 7000), (7000, 14_000)]
        );
    }

    #[test]
    fn acknowledgements_round_down_to_whole_batches() {
        let ends = RecordEnds::default();
        ends.push(100);
        ends.push(8292);
        ends.push(16484);
        assert_eq!(ends.round_down(99), 0);
        assert_eq!(ends.round_down(100), 100);
        assert_eq!(
            ends.round_down(8291),
            100,
            "a partial record credits nothing"
        );
        assert_eq!(
            ends.round_down(16485),
            16484,
            "a FIN's sequence number is no record"
        );
    }

    #[test]
    fn thinning_only_delays() {
        let ends = RecordEnds::default();
        for i in 1..=(MAX_ENDS as u64 + 10) {
            ends.push(i * 10);
        }
        for acked in [5, 15, 999, 2000, 2605] {
            let r = ends.round_down(acked);
            assert!(r <= acked && r % 10 == 0, "{acked} -> {r}");
        }
    }
}
