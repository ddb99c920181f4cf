//! What the connection state machine asks of its socket, and the real socket behind it.
//!
//! [`Conn`](super::conn::Conn) makes no syscall itself: it receives (when its driver says the
//! socket is readable), sizes the send buffer (a shaped connection's from its share, an
//! unshaped download's as [`sndbuf`](super::sndbuf) says), samples `TCP_INFO` for the
//! delivered-bytes accounting and the kernel's unsent queue for the shaper, all through
//! [`ConnSocket`]. Both drivers use [`FdSocket`], the kernel's TCP socket; they differ only in
//! how they submit sends and learn of completions. Unit tests drive a `Conn` over a fake.
//! Sends are the driver's (an io_uring SENDMSG, or `sendmsg`/`sendfile` on readiness): the
//! connection only describes them ([`SendPlan`](super::send::SendPlan)).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::completion::{tcp_acked, tcp_rtt, unsent_bytes, AckState};

use super::sys;

/// The socket operations the connection state machine performs itself.
pub trait ConnSocket {
    /// Non-blocking receive into `buf` (`Ok(0)`: the peer's FIN).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Close the sending side: the kernel sends what is queued, then a FIN.
    fn shutdown_write(&mut self);
    /// Size the kernel send buffer (best effort).
    fn set_send_buffer(&mut self, bytes: usize);
    /// The connection's smoothed round-trip time (`TCP_INFO`).
    fn rtt(&self) -> io::Result<Duration>;
    /// Stream bytes the peer's TCP acknowledged, its window, whether it ended (`TCP_INFO`).
    fn acked(&self) -> io::Result<AckState>;
    /// Bytes queued in the socket that TCP has not sent yet (`SIOCOUTQNSD`).
    fn unsent(&self) -> io::Result<u32>;

    /// The client's address (the auth pool throttles failed attempts by it).
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        None
    }

    /// The socket's `SO_COOKIE` (unique in its network namespace since boot): how the kernel's
    /// `sock_diag` names it after a crash (see [`crate::completion::orphans`]). `None` when the
    /// byte stream's offsets are not the socket's (a layer such as TLS re-frames them) or the
    /// kernel cannot tell.
    fn cookie(&self) -> Option<u64> {
        None
    }
}

/// An accepted TCP socket, owned: dropping it closes the descriptor.
#[derive(Debug)]
pub struct FdSocket(OwnedFd);

impl FdSocket {
    pub fn new(fd: OwnedFd) -> FdSocket {
        FdSocket(fd)
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for FdSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ConnSocket for FdSocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0.as_fd(), buf)
    }

    fn shutdown_write(&mut self) {
        sys::shutdown_write(self.0.as_fd());
    }

    fn set_send_buffer(&mut self, bytes: usize) {
        let _ = sys::set_sndbuf(self.0.as_fd(), bytes);
    }

    fn rtt(&self) -> io::Result<Duration> {
        tcp_rtt(self.raw())
    }

    fn acked(&self) -> io::Result<AckState> {
        tcp_acked(self.raw())
    }

    fn unsent(&self) -> io::Result<u32> {
        unsent_bytes(self.raw())
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        let addr = socket2::SockRef::from(&self.0).peer_addr().ok()?;
        addr.as_socket().map(|a| a.ip())
    }

    fn cookie(&self) -> Option<u64> {
        socket2::SockRef::from(&self.0).cookie().ok()
    }
}

/// A scripted socket for unit tests: what the peer sent, what its TCP acknowledged, how much
/// is stuck unsent.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeSocket {
    /// Bytes the next `recv`s return (then `WouldBlock`, or `Ok(0)` once `fin`).
    pub incoming: Vec<u8>,
    pub fin: bool,
    pub ack: Option<AckState>,
    pub unsent: u32,
    pub sndbuf: Option<usize>,
    pub shut_write: bool,
}

#[cfg(test)]
impl ConnSocket for FakeSocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return if self.fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.drain(..n);
        Ok(n)
    }

    fn shutdown_write(&mut self) {
        self.shut_write = true;
    }

    fn set_send_buffer(&mut self, bytes: usize) {
        self.sndbuf = Some(bytes);
    }

    fn rtt(&self) -> io::Result<Duration> {
        Ok(Duration::from_micros(100))
    }

    fn acked(&self) -> io::Result<AckState> {
        self.ack.ok_or_else(|| io::ErrorKind::Unsupported.into())
    }

    fn unsent(&self) -> io::Result<u32> {
        Ok(self.unsent)
    }
}
