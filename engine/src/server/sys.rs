//! Thin, checked wrappers over the syscalls the server drivers use (sockets, eventfd, epoll).
//!
//! Every libc call goes through `syscall!`, which maps `-1` to `io::Error::last_os_error()`.
//! The macro contains no `unsafe` of its own: each call site wraps it in an `unsafe` block with
//! a `// SAFETY:` note saying why that call's pointers and descriptors are valid. Descriptors the
//! server owns are `OwnedFd`s (closed on drop), so no safe function here closes a raw fd.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Call a libc function and turn `-1` into the thread's errno.
///
/// The expansion calls `libc::$fn` directly, so it only compiles inside an `unsafe` block: the
/// caller writes `unsafe { syscall!(..) }` under its own `// SAFETY:` comment, which must show
/// that every pointer argument is valid for what that function reads or writes.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
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
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

/// Size a connection's kernel send buffer (shaped connections need little).
pub fn set_sndbuf(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    SockRef::from(&fd).set_send_buffer_size(bytes)
}

/// An eventfd used to wake a worker (auth results, drain).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }?;
    // SAFETY: eventfd just returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd counter (wakes whoever waits on it).
pub fn eventfd_wake(fd: RawFd) {
    let one: u64 = 1;
    // A full counter (EAGAIN) still leaves the fd readable, so the error is harmless.
    // SAFETY: the kernel reads 8 bytes from the live local `one`; a stale fd is an error.
    let _ = unsafe { syscall!(write(fd, (&one as *const u64).cast(), 8)) };
}

/// Drain an eventfd counter (non-blocking).
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: the kernel writes at most 8 bytes into the live local `v`.
    let _ = unsafe { syscall!(read(fd, (&mut v as *mut u64).cast(), 8)) };
}

/// Non-blocking receive into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is borrowed mutably
    // for the call.
    let n = unsafe { syscall!(recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)) }?;
    Ok(n as usize)
}

/// Non-blocking gathered send (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE; `more`:
/// MSG_MORE, more follows, let the kernel coalesce).
///
/// # Safety
/// Every `iovec` in `iov` must describe memory valid for reads of `iov_len` bytes for the
/// duration of the call (the kernel copies from it). Mapped file bytes qualify even if the file
/// was truncated: the kernel then fails the send with `EFAULT` instead of faulting weir.
pub unsafe fn sendmsg(fd: BorrowedFd<'_>, iov: &[libc::iovec], more: bool) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid "no name, no control data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    let flags = if more {
        libc::MSG_NOSIGNAL | libc::MSG_MORE
    } else {
        libc::MSG_NOSIGNAL
    };
    // SAFETY: `msg` is a live local pointing at `iov`, whose buffers the caller vouches for;
    // the kernel only reads through it.
    let n = unsafe { syscall!(sendmsg(fd.as_raw_fd(), &msg, flags)) }?;
    Ok(n as usize)
}

/// Non-blocking `sendfile(2)` of `len` bytes of `file` at `offset` to `sock`.
pub fn sendfile(sock: BorrowedFd<'_>, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: the only pointer is the live local `off`, which the kernel reads and updates;
    // the kernel moves the file bytes itself (no user buffer). A stale `file` is an error.
    let n = unsafe { syscall!(sendfile(sock.as_raw_fd(), file, &mut off, len)) }?;
    Ok(n as usize)
}

/// Accept one connection, non-blocking and close-on-exec.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers: the kernel writes no peer address.
    let fd = unsafe {
        syscall!(accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))
    }?;
    // SAFETY: accept4 just returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Shut a socket down both ways: in-flight operations on it complete with an error.
pub fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown takes no pointers.
    let _ = unsafe { syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_RDWR)) };
}

/// Close the sending side only: the kernel sends what is queued, then a FIN.
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown takes no pointers.
    let _ = unsafe { syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR)) };
}

/// Best-effort write of a small static response on a fresh socket (503 over the connection cap).
pub fn send_small(fd: BorrowedFd<'_>, bytes: &[u8]) {
    // SAFETY: the kernel reads `bytes.len()` bytes from the borrowed slice.
    let _ = unsafe {
        syscall!(send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        ))
    };
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the kernel writes one `rlimit` into the live local `lim`.
    if unsafe { syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)) }.is_err() {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: the kernel reads one `rlimit` from the live local `want`.
        if unsafe { syscall!(setrlimit(libc::RLIMIT_NOFILE, &want)) }.is_ok() {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}
