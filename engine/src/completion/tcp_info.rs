//! How much of a connection's stream the client's TCP acknowledged, from the kernel.
//!
//! `getsockopt(TCP_INFO)` fills `struct tcp_info` (linux/tcp.h); weir needs `tcpi_bytes_acked`
//! (Linux 4.1), the count of stream bytes acknowledged since the connection began, and
//! `tcpi_notsent_bytes` (Linux 4.6), what still waits in the send queue. The struct is declared
//! here up to `tcpi_notsent_bytes` with the kernel's layout (glibc's `netinet/tcp.h` stops
//! earlier on older versions); the kernel copies `min(optlen, its size)` bytes, so a longer
//! kernel struct is fine and a shorter one (an older kernel) is reported as unsupported.
//!
//! What "acknowledged" means: the client's kernel acknowledges bytes when it queues them for
//! its application, not when the application reads them. A client that reads nothing still
//! acknowledges up to its receive buffer. See [`TcpDelivery::bytes_acked`].
//!
//! Unsafe surface: one `getsockopt` and one `ioctl`, each into a local of the right size.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::RawFd;

/// `struct tcp_info` from linux/tcp.h, up to `tcpi_snd_wnd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct KernelTcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    /// `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`.
    wscale: u8,
    /// `tcpi_delivery_rate_app_limited : 1, tcpi_fastopen_client_fail : 2`.
    flags: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
    busy_time: u64,
    rwnd_limited: u64,
    sndbuf_limited: u64,
    delivered: u32,
    delivered_ce: u32,
    bytes_sent: u64,
    bytes_retrans: u64,
    dsack_dups: u32,
    reord_seen: u32,
    rcv_ooopack: u32,
    /// The peer's advertised receive window (Linux 5.4).
    snd_wnd: u32,
}

// The offsets linux/tcp.h gives these fields (checked against the C header in a test).
const _: () = assert!(offset_of!(KernelTcpInfo, rto) == 8);
const _: () = assert!(offset_of!(KernelTcpInfo, unacked) == 24);
const _: () = assert!(offset_of!(KernelTcpInfo, total_retrans) == 100);
const _: () = assert!(offset_of!(KernelTcpInfo, pacing_rate) == 104);
const _: () = assert!(offset_of!(KernelTcpInfo, bytes_acked) == 120);
const _: () = assert!(offset_of!(KernelTcpInfo, notsent_bytes) == 144);
const _: () = assert!(offset_of!(KernelTcpInfo, snd_wnd) == 228);

/// Bytes of `tcp_info` the kernel must fill for `snd_wnd` to be valid (5.4+).
const SND_WND_LEN: usize = offset_of!(KernelTcpInfo, snd_wnd) + size_of::<u32>();

/// Bytes of `tcp_info` the kernel must fill for `notsent_bytes` to be valid.
const NEEDED_LEN: usize = offset_of!(KernelTcpInfo, notsent_bytes) + size_of::<u32>();

/// What the kernel says about a connection's sent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpDelivery {
    /// Stream bytes the peer's TCP acknowledged since the connection began. After the FIN is
    /// acknowledged this is one more than the bytes written (the FIN takes a sequence number):
    /// [`StreamMap::acknowledge`](super::StreamMap::acknowledge) clamps it. The peer
    /// acknowledges what its kernel queued, whether or not its application read it.
    pub bytes_acked: u64,
    /// Bytes in the send queue not yet sent (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Bytes sent but not yet acknowledged: the send queue (`SIOCOUTQ`) less `notsent_bytes`.
    /// Read by a second call, so it may be a moment newer than the other fields.
    pub unacked_bytes: u32,
    /// Segments sent but not yet acknowledged (`tcpi_unacked`).
    pub unacked_segments: u32,
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// The receive window the peer advertises (`tcpi_snd_wnd`, Linux 5.4+): zero means its
    /// receive buffer is full of bytes its application has not read.
    pub peer_window: Option<u32>,
}

/// `getsockopt(TCP_INFO)` into the kernel layout; returns the struct and how many bytes of it
/// the kernel filled. `Unsupported` on a kernel older than 4.6 (no `tcpi_notsent_bytes`).
fn read_tcp_info(fd: RawFd) -> io::Result<(KernelTcpInfo, usize)> {
    let mut info = KernelTcpInfo::default();
    let mut len = size_of::<KernelTcpInfo>() as libc::socklen_t;
    // SAFETY: `info` is a live, writable local of `size_of::<KernelTcpInfo>()` bytes and `len`
    // says exactly that, so the kernel writes at most that many bytes into it; every bit
    // pattern is a valid `KernelTcpInfo` (integers only). A bad `fd` is an error, not UB.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut KernelTcpInfo).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < NEEDED_LEN {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("kernel tcp_info is {len} bytes, tcpi_notsent_bytes needs {NEEDED_LEN}"),
        ));
    }
    Ok((info, len as usize))
}

/// Reads [`TcpDelivery`] for the TCP socket `fd`. Errors are the syscalls' (`EBADF`,
/// `ENOTSOCK`, `EOPNOTSUPP` for a non-TCP socket), or `Unsupported` on a kernel older than
/// 4.6 whose `tcp_info` ends before `tcpi_notsent_bytes`.
pub fn tcp_delivery(fd: RawFd) -> io::Result<TcpDelivery> {
    let (info, len) = read_tcp_info(fd)?;
    let queued = send_queue_bytes(fd)?;
    Ok(TcpDelivery {
        bytes_acked: info.bytes_acked,
        notsent_bytes: info.notsent_bytes,
        unacked_bytes: queued.saturating_sub(info.notsent_bytes),
        unacked_segments: info.unacked,
        state: info.state,
        peer_window: (len >= SND_WND_LEN).then_some(info.snd_wnd),
    })
}

/// What accounting polls need, from one `getsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckState {
    /// `tcpi_bytes_acked`: see [`TcpDelivery::bytes_acked`].
    pub bytes_acked: u64,
    /// `tcpi_snd_wnd` (Linux 5.4+, else `None`): zero means the peer's receive buffer is full.
    pub window: Option<u32>,
    /// The peer ended the connection: it sent a FIN (`CLOSE_WAIT`, `LAST_ACK`, `CLOSING`,
    /// `TIME_WAIT`) or a reset, or TCP gave up on it (`CLOSE`, while weir still holds the socket).
    pub peer_ended: bool,
}

// TCP states from linux/tcp_states.h (the libc crate does not export them for Linux).
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// Reads [`AckState`] for the TCP socket `fd`.
pub fn tcp_acked(fd: RawFd) -> io::Result<AckState> {
    let (info, len) = read_tcp_info(fd)?;
    Ok(AckState {
        bytes_acked: info.bytes_acked,
        window: (len >= SND_WND_LEN).then_some(info.snd_wnd),
        peer_ended: matches!(
            info.state,
            TCP_TIME_WAIT | TCP_CLOSE | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING
        ),
    })
}

/// The connection's smoothed round-trip time (`tcpi_rtt`; after the handshake it is that RTT).
pub fn tcp_rtt(fd: RawFd) -> io::Result<std::time::Duration> {
    let (info, _) = read_tcp_info(fd)?;
    Ok(std::time::Duration::from_micros(u64::from(info.rtt)))
}

/// Bytes in the socket's send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
pub fn send_queue_bytes(fd: RawFd) -> io::Result<u32> {
    queue_ioctl(fd, libc::TIOCOUTQ as _)
}

/// Bytes the socket holds that TCP has not sent yet (`SIOCOUTQNSD`): non-zero when the peer's
/// window is closed (or the congestion window full).
pub fn unsent_bytes(fd: RawFd) -> io::Result<u32> {
    queue_ioctl(fd, libc::SIOCOUTQNSD as _)
}

/// An ioctl that reports one queue length as an `int` (`SIOCOUTQ`, `SIOCOUTQNSD`).
fn queue_ioctl(fd: RawFd, request: libc::Ioctl) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one `int` through the pointer, which points to the live
    // local `n`. A bad `fd` is an error, not UB.
    let rc = unsafe { libc::ioctl(fd, request, &mut n as *mut libc::c_int) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// Polls until `done` holds for the server's delivery, or panics after 10 s.
    fn wait_for(fd: RawFd, what: &str, done: impl Fn(&TcpDelivery) -> bool) -> TcpDelivery {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = tcp_delivery(fd).unwrap();
            if done(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bytes the socket has received and its application has not read (`FIONREAD`).
    fn unread_bytes(fd: RawFd) -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one `int` into the live local `n`.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        n as u64
    }

    #[test]
    fn layout_matches_libc() {
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_bytes_acked),
            offset_of!(KernelTcpInfo, bytes_acked)
        );
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_notsent_bytes),
            offset_of!(KernelTcpInfo, notsent_bytes)
        );
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_unacked),
            offset_of!(KernelTcpInfo, unacked)
        );
    }

    #[test]
    fn a_fresh_connection_has_acked_nothing() {
        let (server, _client) = pair();
        let d = tcp_delivery(server.as_raw_fd()).unwrap();
        assert_eq!(d.bytes_acked, 0, "the SYN is not counted");
        assert_eq!(d.state, 1, "ESTABLISHED");
    }

    #[test]
    fn bytes_read_by_the_client_are_acked() {
        const SIZE: usize = 1 << 20;
        let (mut server, mut client) = pair();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            client.read_to_end(&mut buf).unwrap();
            buf.len()
        });
        server.write_all(&vec![7u8; SIZE]).unwrap();
        let d = wait_for(server.as_raw_fd(), "1 MiB acked", |d| {
            d.bytes_acked >= SIZE as u64
        });
        assert_eq!(d.bytes_acked, SIZE as u64);
        assert_eq!(d.notsent_bytes, 0);
        assert_eq!(d.unacked_bytes, 0);
        // The FIN takes one more sequence number once the peer acknowledges it.
        server.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), SIZE);
        let d = wait_for(server.as_raw_fd(), "FIN acked", |d| {
            d.bytes_acked > SIZE as u64
        });
        assert_eq!(d.bytes_acked, SIZE as u64 + 1);
    }

    /// A client that reads nothing: the server hands the kernel far more than the client ever
    /// acknowledges, and what the client acknowledges is exactly what sits unread in its
    /// receive buffer. The rest is in the server's send queue, not counted.
    #[test]
    fn a_client_that_reads_nothing_acks_only_its_receive_buffer() {
        let (mut server, client) = pair();
        server.set_nonblocking(true).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let mut written = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Fill both buffers: stop when the kernel has refused more for a while.
        let mut refusals = 0;
        while refusals < 50 {
            assert!(Instant::now() < deadline, "send buffer never filled");
            match server.write(&chunk) {
                Ok(n) => {
                    written += n as u64;
                    refusals = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    refusals += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let fd = server.as_raw_fd();
        let d = wait_for(fd, "acks to settle", |d| {
            let queued = u64::from(d.notsent_bytes) + u64::from(d.unacked_bytes);
            d.bytes_acked + queued == written && d.bytes_acked == unread_bytes(client.as_raw_fd())
        });
        let unread = unread_bytes(client.as_raw_fd());
        eprintln!(
            "written {written}, acked {}, unread at client {unread}",
            d.bytes_acked
        );
        assert_eq!(
            d.bytes_acked, unread,
            "acked = queued unread at the receiver"
        );
        assert!(d.bytes_acked < written, "{d:?}, written {written}");
        assert!(
            written - d.bytes_acked >= u64::from(d.notsent_bytes),
            "{d:?}, written {written}"
        );
        assert!(written - d.bytes_acked > 0);
    }

    /// The peer ending the connection shows in [`AckState::peer_ended`], whether by a reset
    /// (closed with unread bytes) or a FIN; the acknowledged count survives the reset.
    #[test]
    fn the_peer_ending_the_connection_is_seen() {
        for unread in [true, false] {
            let (mut server, client) = pair();
            let fd = server.as_raw_fd();
            let s = tcp_acked(fd).unwrap();
            assert!(!s.peer_ended, "{s:?}");
            if unread {
                server.write_all(&[3u8; 1000]).unwrap();
                wait_for(fd, "1000 bytes acked", |d| d.bytes_acked == 1000);
            }
            drop(client);
            wait_for(fd, "the peer's FIN or reset", |d| d.state != 1);
            let s = tcp_acked(fd).unwrap();
            assert!(s.peer_ended, "{s:?}");
            assert_eq!(s.bytes_acked, if unread { 1000 } else { 0 }, "{s:?}");
        }
    }

    #[test]
    fn not_a_tcp_socket_is_an_error() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(tcp_delivery(file.as_raw_fd()).is_err());
    }
}
