//! What the connection state machine asks of its socket, and the real socket behind it.
//!
//! [`Conn`](super::conn::Conn) makes no syscall itself: it receives (when its driver says the
//! socket is readable), sizes the send buffer of a shaped connection, samples `TCP_INFO` for
//! the delivered-bytes accounting and the kernel's unsent queue for the shaper, all through
//! [`ConnSocket`]. Both drivers use [`FdSocket`], the kernel's TCP socket; they differ only in
//! how they submit sends and learn of completions. Unit tests drive a `Conn` over a fake.
//! Sends are the driver's (an io_uring SENDMSG, or `sendmsg`/`sendfile` on readiness): the
//! connection only describes them ([`SendPlan`](super::send::SendPlan)).
//!
//! [`SendBufferTuner`] sizes the send buffer of an *unshaped* download (shaped ones are sized
//! by [`shaping`](super::shaping)) with the same rule, [`ShaperConfig::sndbuf_for`]: the
//! measured delivery rate over twice the RTT (at least 40 ms), between one minimum grant and
//! 4 MiB. A download starts at the floor and grows as it proves it reads, so a client that never
//! reads pins one small buffer, not the ~4 MB the kernel's autotuning would queue.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use weir_shaper::{Rate, ShaperConfig};

use crate::completion::{tcp_acked, tcp_rate, tcp_rtt, unsent_bytes, AckState, RateSample};

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
    /// Acknowledged bytes, delivery rate, RTT and window (`TCP_INFO`).
    fn rate(&self) -> io::Result<RateSample>;

    /// The client's address (the auth pool throttles failed attempts by it).
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        None
    }
}

/// Re-evaluate a growing buffer this often (the worker's sweep period), a settled one less.
const TUNE_GROWING: Duration = Duration::from_millis(250);
const TUNE_SETTLED: Duration = Duration::from_secs(1);

/// The send-buffer size of one unshaped connection, re-evaluated from `TCP_INFO` as the
/// download progresses (on the worker's sweep, never per send).
#[derive(Debug, Default)]
pub struct SendBufferTuner {
    /// The `SO_SNDBUF` value set, once sized.
    size: Option<u32>,
    /// `bytes_acked` and when, at the last evaluation.
    last: Option<(u64, Instant)>,
    next: Option<Instant>,
}

impl SendBufferTuner {
    /// An unshaped download begins: size the buffer at the floor unless already sized (a
    /// keep-alive connection keeps what it earned).
    pub fn start(&mut self, sock: &mut impl ConnSocket, cfg: &ShaperConfig, now: Instant) {
        if self.size.is_some() {
            return;
        }
        let rtt = sock.rtt().unwrap_or_default();
        if let Some(bytes) = cfg.sndbuf_for(Rate::BytesPerSec(0), rtt) {
            sock.set_send_buffer(bytes as usize);
            self.size = Some(bytes);
        }
        self.last = sock.rate().ok().map(|r| (r.bytes_acked, now));
        self.next = Some(now + TUNE_GROWING);
    }

    /// The current size, if this connection was sized.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    /// Re-size from the delivery rate: the kernel's latest sample, but no more than what the
    /// peer acknowledged since the last evaluation (a client that stopped reading, whose last
    /// sample is stale, or whose window is shut, counts as rate 0).
    pub fn tune(&mut self, sock: &mut impl ConnSocket, cfg: &ShaperConfig, now: Instant) {
        let (Some(size), Some(next)) = (self.size, self.next) else {
            return;
        };
        if now < next {
            return;
        }
        let Ok(sample) = sock.rate() else {
            return;
        };
        let progress = match self.last {
            Some((acked, at)) if now > at => {
                let secs = (now - at).as_secs_f64();
                (sample.bytes_acked.saturating_sub(acked) as f64 / secs) as u64
            }
            _ => 0,
        };
        self.last = Some((sample.bytes_acked, now));
        let rate = if sample.window == Some(0) {
            0
        } else {
            sample.delivery_rate.min(progress)
        };
        let Some(want) = cfg.sndbuf_for(Rate::BytesPerSec(rate), sample.rtt) else {
            return;
        };
        if want != size {
            sock.set_send_buffer(want as usize);
            self.size = Some(want);
        }
        self.next = Some(
            now + if want > size {
                TUNE_GROWING
            } else {
                TUNE_SETTLED
            },
        );
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

    fn rate(&self) -> io::Result<RateSample> {
        tcp_rate(self.raw())
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        let addr = socket2::SockRef::from(&self.0).peer_addr().ok()?;
        addr.as_socket().map(|a| a.ip())
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
    /// What `rate` reports (`None`: unsupported).
    pub rate: Option<RateSample>,
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

    fn rate(&self) -> io::Result<RateSample> {
        self.rate.ok_or_else(|| io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(acked: u64, rate: u64, window: u32) -> Option<RateSample> {
        Some(RateSample {
            bytes_acked: acked,
            delivery_rate: rate,
            rtt: Duration::from_micros(100),
            window: Some(window),
        })
    }

    #[test]
    fn a_reader_grows_a_non_reader_stays_at_the_floor() {
        let cfg = ShaperConfig {
            min_grant_bytes: 32 * 1024,
            ..ShaperConfig::default()
        };
        let t0 = Instant::now();
        let step = |k: u32| t0 + TUNE_GROWING * k;

        // A reader at 1 GB/s: from the floor to the 4 MiB cap.
        let mut sock = FakeSocket {
            rate: sample(0, 0, 65535),
            ..FakeSocket::default()
        };
        let mut t = SendBufferTuner::default();
        t.start(&mut sock, &cfg, t0);
        assert_eq!(sock.sndbuf, Some(32 * 1024), "starts at one minimum grant");
        t.tune(&mut sock, &cfg, t0); // not due yet
        assert_eq!(t.size(), Some(32 * 1024));
        sock.rate = sample(250_000_000, 1_000_000_000, 65535);
        t.tune(&mut sock, &cfg, step(1));
        assert_eq!(sock.sndbuf, Some(4 << 20));

        // A client that read one receive buffer and stopped: window shut, rate stale but high.
        let mut sock = FakeSocket {
            rate: sample(0, 0, 65535),
            ..FakeSocket::default()
        };
        let mut t = SendBufferTuner::default();
        t.start(&mut sock, &cfg, t0);
        sock.rate = sample(128 * 1024, 3_000_000_000, 0);
        t.tune(&mut sock, &cfg, step(1));
        assert_eq!(t.size(), Some(32 * 1024));
        // Window open again but nothing acknowledged since: the stale sample does not count.
        sock.rate = sample(128 * 1024, 3_000_000_000, 1000);
        t.tune(&mut sock, &cfg, step(6));
        assert_eq!(t.size(), Some(32 * 1024));

        // A slow reader (2 MB/s): 40 ms of its rate.
        let mut sock = FakeSocket {
            rate: sample(0, 0, 65535),
            ..FakeSocket::default()
        };
        let mut t = SendBufferTuner::default();
        t.start(&mut sock, &cfg, t0);
        sock.rate = sample(500_000, 2_000_000, 65535);
        t.tune(&mut sock, &cfg, step(1));
        assert_eq!(t.size(), Some(80_000));
    }
}
