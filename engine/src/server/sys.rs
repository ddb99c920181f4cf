//! Thin, checked wrappers over the syscalls the server drivers use (sockets, eventfd, epoll).
//!
//! Every libc call goes through `syscall!`, which maps `-1` to `io::Error::last_os_error()`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Call a libc function and turn `-1` into the thread's errno.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: each call site passes arguments valid for the named libc function; see there.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// A listening socket for one worker: SO_REUSEPORT so every worker owns its own accept queue,
/// and the options accepted sockets inherit (TCP keepalive, TCP_NODELAY) set once here.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.set_nodelay(true)?;
    socket.set_keepalive(true)?;
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(5),
    )?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(OwnedFd::from(socket))
}

/// The address a listener is bound to (for port 0).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SockRef borrows the fd without taking ownership.
    let raw = BorrowedRaw(fd);
    let sock = SockRef::from(&raw);
    sock.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

struct BorrowedRaw(RawFd);
impl AsRawFd for BorrowedRaw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
impl std::os::fd::AsFd for BorrowedRaw {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the fd is owned by the caller of `local_addr`/`set_sndbuf` and outlives this borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

/// Size a connection's kernel send buffer (shaped connections need little).
pub fn set_sndbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    let raw = BorrowedRaw(fd);
    SockRef::from(&raw).set_send_buffer_size(bytes)
}

/// An eventfd used to wake a worker (auth results, drain).
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: eventfd just returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd counter (wakes whoever waits on it).
pub fn eventfd_wake(fd: RawFd) {
    let one: u64 = 1;
    // A full counter (EAGAIN) still leaves the fd readable, so the error is harmless.
    let _ = syscall!(write(fd, (&one as *const u64).cast(), 8));
}

/// Drain an eventfd counter (non-blocking).
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    let _ = syscall!(read(fd, (&mut v as *mut u64).cast(), 8));
}

/// Non-blocking receive into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))?;
    Ok(n as usize)
}

/// Non-blocking gathered send (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
pub fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// Non-blocking `sendfile(2)` of `len` bytes of `file` at `offset` to `sock`.
pub fn sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    let n = syscall!(sendfile(sock, file, &mut off, len))?;
    Ok(n as usize)
}

/// Non-blocking gathered send with MSG_MORE (more follows: let the kernel coalesce).
pub fn sendmsg_more(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_MORE))?;
    Ok(n as usize)
}

/// Accept one connection, non-blocking and close-on-exec.
pub fn accept(listener: RawFd) -> io::Result<RawFd> {
    syscall!(accept4(
        listener,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))
}

/// Close a descriptor the caller owns as a raw fd.
pub fn close(fd: RawFd) {
    let _ = syscall!(close(fd));
}

/// Shut a socket down both ways: in-flight operations on it complete with an error.
pub fn shutdown(fd: RawFd) {
    let _ = syscall!(shutdown(fd, libc::SHUT_RDWR));
}

/// Close the sending side only: the kernel sends what is queued, then a FIN.
pub fn shutdown_write(fd: RawFd) {
    let _ = syscall!(shutdown(fd, libc::SHUT_WR));
}

/// Best-effort write of a small static response on a fresh socket (503 over the connection cap).
pub fn send_small(fd: RawFd, bytes: &[u8]) {
    let _ = syscall!(send(
        fd,
        bytes.as_ptr().cast(),
        bytes.len(),
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
    ));
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)).is_err() {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if syscall!(setrlimit(libc::RLIMIT_NOFILE, &want)).is_ok() {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}
