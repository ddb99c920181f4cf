//! One HTTP/1.1 client connection: a non-blocking socket, its TLS layer if the target is
//! `https://`, and where it is in its request.
//!
//! A connection knows nothing of scenarios. It is opened (bind to a source address, non-blocking
//! connect), handshakes when it speaks TLS, is given a request to write, and hands the worker the
//! plaintext it reads ([`Conn::read`]). Its only allocations are the request and partial-head
//! buffers, reused for every request it carries, and the TLS state (rustls' own buffers).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use rustls::ClientConnection;
use socket2::{Domain, Protocol, Socket, Type};

use crate::errors::ErrorKind;
use crate::http::BodyDecoder;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Non-blocking connect in progress.
    Connecting,
    /// TCP connected, TLS handshake in progress.
    Handshaking,
    /// Connected, no request outstanding.
    Idle,
    /// Writing the request.
    Sending,
    /// Waiting for / reading the response head.
    Head,
    /// Reading the body.
    Body,
}

/// Who a connection works for: the scenario's owner (user, loop) and slot within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub owner: u32,
    pub tag: u32,
}

/// One client connection.
pub struct Conn {
    pub stream: TcpStream,
    pub who: Who,
    pub phase: Phase,
    /// The request being written (kept for reuse).
    pub req: Vec<u8>,
    pub sent: usize,
    /// A response head that arrived in pieces (kept for reuse).
    pub head: Vec<u8>,
    pub body: BodyDecoder,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
    /// Whether the request asked to keep the connection.
    pub req_keep_alive: bool,
    pub opened_at: Instant,
    /// When the request was fully written.
    pub sent_at: Instant,
    /// Last time anything moved (connect, write, read): the stall clock.
    pub last_progress: Instant,
    /// Last read that returned body bytes (for stall gaps), reset per response.
    pub last_body_read: Option<Instant>,
    /// A byte of the current response arrived (TTFB recorded).
    pub first_byte: bool,
    /// In the worker's "still readable" list.
    pub queued: bool,
    /// The TLS layer (`https://` targets).
    pub tls: Option<Box<ClientConnection>>,
    /// TLS: the socket reached EOF while plaintext was still being handed out; the next
    /// [`Conn::read`] reports the end.
    pub tls_eof: bool,
    /// When the TCP connection was established (the TLS handshake's start).
    pub connected_at: Instant,
    /// Registered for writable events too (while connecting, or while a request waits for
    /// send-buffer space). Otherwise only readable: ACKs freeing send space would wake the loop
    /// for nothing.
    pub want_write: bool,
}

impl Conn {
    /// Start a non-blocking connect to `target`, bound to `source` when given.
    pub fn connect(
        target: SocketAddr,
        source: Option<IpAddr>,
        who: Who,
        tls: Option<&crate::tls::Tls>,
        now: Instant,
    ) -> Result<Conn, ErrorKind> {
        let tls = tls.map(|t| t.connection().map(Box::new)).transpose()?;
        let domain = Domain::for_address(target);
        let sock = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
            .map_err(|e| ErrorKind::from_connect_error(&e))?;
        let _ = sock.set_nodelay(true);
        if let Some(src) = source {
            if src.is_ipv4() {
                // Best effort: without it each bound socket reserves a port up front.
                let _ = crate::sys::set_bind_address_no_port(&sock);
            }
            sock.bind(&SocketAddr::new(src, 0).into())
                .map_err(|e| ErrorKind::from_connect_error(&e))?;
        }
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(ErrorKind::from_connect_error(&e)),
        }
        let std_stream: std::net::TcpStream = sock.into();
        Ok(Conn {
            stream: TcpStream::from_std(std_stream),
            who,
            phase: Phase::Connecting,
            req: Vec::with_capacity(512),
            sent: 0,
            head: Vec::new(),
            body: BodyDecoder::for_head(&crate::http::Head::default()),
            keep_alive: true,
            req_keep_alive: true,
            opened_at: now,
            sent_at: now,
            last_progress: now,
            last_body_read: None,
            first_byte: false,
            queued: false,
            tls,
            tls_eof: false,
            connected_at: now,
            want_write: true,
        })
    }

    /// After a writable/readable event while connecting: has the handshake finished?
    /// `Ok(true)` connected, `Ok(false)` still in progress.
    pub fn finish_connect(&mut self) -> Result<bool, ErrorKind> {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(ErrorKind::from_connect_error(&e)),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(ErrorKind::from_connect_error(&e)),
        }
    }

    /// Write as much of the request as the socket takes. `Ok(true)` when all of it is written
    /// (with TLS: encrypted and handed to the socket).
    pub fn write_request(&mut self) -> Result<bool, ErrorKind> {
        if let Some(tls) = self.tls.as_mut() {
            if self.sent < self.req.len() {
                // rustls buffers the plaintext (a request head is far below its limit).
                tls.writer()
                    .write_all(&self.req[self.sent..])
                    .map_err(|e| ErrorKind::from_io_error(&e))?;
                self.sent = self.req.len();
            }
            return self.tls_flush();
        }
        while self.sent < self.req.len() {
            match self.stream.write(&self.req[self.sent..]) {
                Ok(0) => return Err(ErrorKind::Reset),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ErrorKind::from_io_error(&e)),
            }
        }
        Ok(true)
    }

    /// TLS: write the records rustls has queued. `Ok(true)` when none is left.
    fn tls_flush(&mut self) -> Result<bool, ErrorKind> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(true);
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err(ErrorKind::Reset),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ErrorKind::from_io_error(&e)),
            }
        }
        Ok(true)
    }

    /// TLS: read what the socket has into rustls and process it. `Ok(false)` when the socket
    /// had nothing (would block); EOF sets `tls_eof`.
    fn tls_fill(&mut self) -> Result<bool, ErrorKind> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(false);
        };
        loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    self.tls_eof = true;
                    break;
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ErrorKind::from_io_error(&e)),
            }
        }
        if let Err(e) = tls.process_new_packets() {
            // Tell the server why (the alert rustls queued), best effort.
            let _ = self.tls_flush();
            return Err(crate::tls::error_kind(&e));
        }
        Ok(true)
    }

    /// TLS: drive the handshake as far as the socket allows. `Ok(true)` once it is done and its
    /// last flight is written.
    pub fn handshake(&mut self) -> Result<bool, ErrorKind> {
        loop {
            if !self.tls_flush()? {
                return Ok(false);
            }
            match self.tls.as_ref() {
                Some(t) if t.is_handshaking() => {}
                _ => return Ok(true),
            }
            if self.tls_eof {
                return Err(ErrorKind::Tls);
            }
            if !self.tls_fill()? {
                return Ok(false);
            }
        }
    }

    /// Read response bytes (plaintext) into `buf`. `Data::drained` says the socket's receive
    /// queue is empty (a later byte raises a new readiness edge), so the caller may stop.
    ///
    /// With TLS the first half of `buf` receives plaintext and the second half is the staging
    /// area of one large `recv` of ciphertext, fed to rustls from memory (rustls alone reads at
    /// most 4 KiB per syscall). A `recv` asks for no more than the plaintext half can take after
    /// a record rustls already holds in part, so nothing staged is left over when this returns.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<ReadOutcome, ErrorKind> {
        if self.tls.is_none() {
            loop {
                return match self.stream.read(buf) {
                    Ok(0) => Ok(ReadOutcome::Eof),
                    Ok(n) => Ok(ReadOutcome::Data {
                        n,
                        drained: n < buf.len(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(ErrorKind::from_io_error(&e)),
                };
            }
        }
        let half = buf.len() / 2;
        let (out, stage) = buf.split_at_mut(half);
        let mut n = 0;
        let end = |n: usize| {
            Ok(if n > 0 {
                ReadOutcome::Data { n, drained: true }
            } else {
                ReadOutcome::Eof
            })
        };
        loop {
            if self.drain_plaintext(out, &mut n)? {
                self.tls_eof = true;
                return end(n);
            }
            if n == out.len() {
                return Ok(ReadOutcome::Data { n, drained: false });
            }
            if self.tls_eof {
                return end(n);
            }
            let room = (out.len() - n).saturating_sub(TLS_RECORD_MAX);
            if room < 4096 {
                return Ok(ReadOutcome::Data { n, drained: false });
            }
            let want = room.min(stage.len());
            let got = loop {
                match self.stream.read(&mut stage[..want]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(if n > 0 {
                            ReadOutcome::Data { n, drained: true }
                        } else {
                            ReadOutcome::WouldBlock
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ErrorKind::from_io_error(&e)),
                }
            };
            let tls = self.tls.as_mut().expect("TLS connection");
            if got == 0 {
                // Let rustls see the end: it then reports close_notify or a truncation.
                let _ = tls.read_tls(&mut io::empty());
                self.tls_eof = true;
                self.tls_process()?;
                continue;
            }
            let mut staged = &stage[..got];
            while !staged.is_empty() {
                let tls = self.tls.as_mut().expect("TLS connection");
                if let Err(e) = tls.read_tls(&mut staged) {
                    return Err(ErrorKind::from_io_error(&e));
                }
                self.tls_process()?;
                if self.drain_plaintext(out, &mut n)? {
                    // close_notify inside the staged bytes: what follows it is not the server's.
                    self.tls_eof = true;
                    return end(n);
                }
            }
            if got < want {
                // A short recv: the receive queue is empty.
                return Ok(if n > 0 {
                    ReadOutcome::Data { n, drained: true }
                } else {
                    ReadOutcome::WouldBlock
                });
            }
        }
    }

    /// TLS: process the records rustls holds; answer what it must answer (a key update), best
    /// effort.
    fn tls_process(&mut self) -> Result<(), ErrorKind> {
        let tls = self.tls.as_mut().expect("TLS connection");
        if let Err(e) = tls.process_new_packets() {
            let _ = self.tls_flush();
            return Err(crate::tls::error_kind(&e));
        }
        if tls.wants_write() {
            let _ = self.tls_flush();
        }
        Ok(())
    }

    /// TLS: move decrypted bytes into `out[*n..]`. `Ok(true)` when the stream has ended
    /// (close_notify, or the socket closed without one: as in clear text, a body with a length
    /// still has to be complete).
    fn drain_plaintext(&mut self, out: &mut [u8], n: &mut usize) -> Result<bool, ErrorKind> {
        let tls = self.tls.as_mut().expect("TLS connection");
        while *n < out.len() {
            match tls.reader().read(&mut out[*n..]) {
                Ok(0) => return Ok(true),
                Ok(k) => *n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(ErrorKind::from_io_error(&e)),
            }
        }
        Ok(false)
    }

    /// TLS: the socket's end was seen but not yet reported by [`Conn::read`].
    pub fn eof_pending(&self) -> bool {
        self.tls_eof
    }
}

/// The most a TLS record takes on the wire (16 KiB of payload plus header, padding and tag):
/// what rustls may already hold of a record when a read starts.
const TLS_RECORD_MAX: usize = 16 * 1024 + 2048;

/// What one [`Conn::read`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `n` bytes of response; `drained` when the socket had no more for now.
    Data { n: usize, drained: bool },
    /// Nothing now; readiness will be signalled again.
    WouldBlock,
    /// The server closed the connection.
    Eof,
}
