//! The epoll driver: the same connection state machine driven by readiness.
//!
//! Connections are registered once, edge-triggered, for read and write readiness; each keeps
//! `readable`/`writable` flags that an edge sets and an `EAGAIN` (or a short read/write) clears,
//! so a state change never costs an `epoll_ctl`. The listener and the wake eventfd are
//! level-triggered. Used where io_uring is missing, too old or refused, and with `--driver epoll`.
//! Everything but submission and completion is the worker's ([`Worker`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::conn::Next;
use super::send::SendPlan;
use super::sys::{self, syscall};
use super::worker::{Submit, Worker, SEND_BUDGET};

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const TLS_LISTENER: u64 = u64::MAX - 2;

/// The epoll instance of one worker.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC)) }?;
        // SAFETY: epoll_create1 just returned a new descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: the kernel reads one `epoll_event` from the live local `ev` (ignored for
        // EPOLL_CTL_DEL); a stale `fd` is an error.
        unsafe { syscall!(epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev)) }?;
        Ok(())
    }

    fn watch_listener(&self, w: &Worker) -> io::Result<()> {
        if let Some(fd) = w.listen_fd() {
            self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, LISTENER)?;
        }
        if let Some(fd) = w.tls_listen_fd() {
            self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, TLS_LISTENER)?;
        }
        Ok(())
    }
}

pub fn run(mut w: Worker) -> io::Result<()> {
    let mut ep = Epoll::new()?;
    // The epoll instance closes on return, then every remaining socket as the worker drops.
    event_loop(&mut w, &mut ep)
}

fn event_loop(w: &mut Worker, ep: &mut Epoll) -> io::Result<()> {
    ep.watch_listener(w)?;
    ep.ctl(libc::EPOLL_CTL_ADD, w.wake_fd(), libc::EPOLLIN as u32, WAKE)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let wake_at = w.next_timer().map_or(w.next_sweep, |t| t.min(w.next_sweep));
        // Connections that used their turn (`ready`) continue at once: do not sleep until the
        // next timer with work queued (that stalled fast downloads to one turn per sweep).
        let timeout = if w.ready.is_empty() {
            wake_at
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(1000) as i32
        } else {
            0
        };
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = match unsafe {
            syscall!(epoll_wait(
                ep.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout
            ))
        } {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        w.ctx.now = Instant::now();
        for ev in &events[..n] {
            let (flags, data) = (ev.events, ev.u64);
            match data {
                LISTENER => accept_burst(w, ep, false),
                TLS_LISTENER => accept_burst(w, ep, true),
                WAKE => {
                    sys::eventfd_drain(w.wake_fd());
                    w.on_wake(ep);
                }
                token => {
                    let Some(c) = w.conns.get_mut(token) else {
                        continue;
                    };
                    if flags
                        & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                            as u32
                        != 0
                    {
                        c.readable = true;
                    }
                    if flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                        c.writable = true;
                    }
                    let want = c.want;
                    ep.drive(w, token, want);
                }
            }
        }
        w.sweep(ep);
        // Shaped connections whose wait is over, or whose chunk the shaper filled, send again.
        w.wake_shaped(ep);
        // Connections that used their turn continue now, after everyone else's events.
        for token in std::mem::take(&mut w.ready) {
            if let Some(c) = w.conns.get_mut(token) {
                let want = c.want;
                ep.drive(w, token, want);
            }
        }
        w.arm_shaper_poll();
        if w.end_iteration() {
            return Ok(());
        }
    }
}

fn accept_burst(w: &mut Worker, ep: &mut Epoll, tls: bool) {
    for _ in 0..128 {
        let listener = if tls { &w.tls_listener } else { &w.listener };
        let Some(listener) = listener.as_ref() else {
            return;
        };
        let fd = match sys::accept(listener.as_fd()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                if w.accept_failed(e.raw_os_error().unwrap_or(0)) {
                    ep.pause_accepting(w);
                    return;
                }
                continue;
            }
        };
        let raw = fd.as_raw_fd();
        let Some(token) = w.admit(fd, tls) else {
            continue;
        };
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        if ep
            .ctl(libc::EPOLL_CTL_ADD, raw, flags as u32, token)
            .is_err()
        {
            w.conns.remove(token);
            continue;
        }
        // Most clients send the request right after connecting: try reading at once.
        ep.drive(w, token, Next::Read);
    }
}

impl Epoll {
    fn pause_accepting(&mut self, w: &Worker) {
        for fd in [w.listen_fd(), w.tls_listen_fd()].into_iter().flatten() {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
    }
}

impl Submit for Epoll {
    /// Carry out what a connection asked for until it has to wait (or used its turn: then it
    /// is queued in `ready` and resumed after this round of events).
    fn drive(&mut self, w: &mut Worker, token: u64, mut next: Next) {
        let mut budget = SEND_BUDGET;
        loop {
            let Some(c) = w.conns.get_mut(token) else {
                return;
            };
            c.want = next;
            next = match next {
                Next::Read if c.readable => c.on_readable(&mut w.ctx),
                Next::Write if c.writable && budget == 0 => {
                    w.ready.push(token);
                    return;
                }
                Next::Write if c.writable => {
                    budget -= 1;
                    let (res, len) = match c.prepare_send(&mut w.ctx) {
                        SendPlan::Iov { len, more } => {
                            // SAFETY: `prepare_send` just pointed the iovecs at bytes the
                            // connection's response holds alive (see `SendBuf`), unchanged
                            // until `on_sent` below.
                            let res =
                                unsafe { sys::sendmsg(c.sock.as_fd(), c.send_buf().iov(), more) };
                            (res, len)
                        }
                        SendPlan::File { fd, offset, len } => {
                            (sys::sendfile(c.sock.as_fd(), fd, offset, len), len)
                        }
                        SendPlan::Wait(at) => {
                            w.park_shaped(token, at);
                            return;
                        }
                    };
                    if matches!(res, Ok(n) if n < len) {
                        c.writable = false;
                    }
                    c.on_sent(&mut w.ctx, res)
                }
                Next::Close => {
                    w.close(token);
                    return;
                }
                Next::Read | Next::Write | Next::Park => return,
            };
        }
    }

    fn stop_accepting(&mut self, w: &mut Worker) {
        self.pause_accepting(w);
    }

    fn resume_accepting(&mut self, w: &mut Worker) {
        if let Err(e) = self.watch_listener(w) {
            // The listener stays open, so the kernel keeps queueing connections for it: try
            // again after another back-off rather than leave them to nobody.
            tracing::error!(error = %e, "epoll: cannot watch the listener again; retrying");
            w.accept_paused_until = Some(w.ctx.now + super::worker::EMFILE_BACKOFF);
            w.next_sweep = w.next_sweep.min(w.ctx.now + super::worker::EMFILE_BACKOFF);
        }
    }
}
