//! One HTTP/1.1 client connection: a non-blocking socket and where it is in its request.
//!
//! A connection knows nothing of scenarios. It is opened (bind to a source address, non-blocking
//! connect), given a request to write, and fed the bytes the worker reads. Its only allocations are
//! the request and partial-head buffers, reused for every request it carries.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::errors::ErrorKind;
use crate::http::BodyDecoder;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Non-blocking connect in progress.
    Connecting,
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
        now: Instant,
    ) -> Result<Conn, ErrorKind> {
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

    /// Write as much of the request as the socket takes. `Ok(true)` when all of it is written.
    pub fn write_request(&mut self) -> Result<bool, ErrorKind> {
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
}
