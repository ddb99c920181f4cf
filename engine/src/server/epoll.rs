//! The epoll driver: the same connection state machine driven by readiness.
//!
//! Connections are registered once, edge-triggered, for read and write readiness; each keeps
//! `readable`/`writable` flags that an edge sets and an `EAGAIN` (or a short read/write) clears,
//! so a state change never costs an `epoll_ctl`. The listener and the wake eventfd are
//! level-triggered. Used where io_uring is missing, too old or refused, and with `--driver epoll`.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::conn::{Conn, Next, SendPlan};
use super::sys::{self, syscall};
use super::worker::{Worker, EMFILE_BACKOFF, SWEEP_EVERY};

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;

pub fn run(mut w: Worker) -> io::Result<()> {
    let ep = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    let result = event_loop(&mut w, ep);
    // Close every remaining socket, then the epoll instance.
    for t in w.conns.tokens() {
        if let Some(c) = w.conns.remove(t) {
            sys::close(c.fd);
        }
    }
    sys::close(ep);
    result
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    syscall!(epoll_ctl(ep, op, fd, &mut ev))?;
    Ok(())
}

fn event_loop(w: &mut Worker, ep: i32) -> io::Result<()> {
    let listen_fd = w.listener.as_ref().map(|l| l.as_raw_fd()).unwrap_or(-1);
    let watch_listener = || {
        ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            listen_fd,
            libc::EPOLLIN as u32,
            LISTENER,
        )
    };
    watch_listener()?;
    ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        w.wake_fd(),
        libc::EPOLLIN as u32,
        WAKE,
    )?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let wake_at = w.next_timer().map_or(w.next_sweep, |t| t.min(w.next_sweep));
        let timeout = wake_at
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000)
            .min(1000) as i32;
        let n = match syscall!(epoll_wait(
            ep,
            events.as_mut_ptr(),
            events.len() as i32,
            timeout
        )) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        w.ctx.now = Instant::now();
        for ev in &events[..n] {
            let (flags, data) = (ev.events, ev.u64);
            match data {
                LISTENER => accept_burst(w, ep),
                WAKE => on_wake(w, ep),
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
                    drive(w, token, want);
                }
            }
        }
        if w.ctx.now >= w.next_sweep {
            w.next_sweep = w.ctx.now + SWEEP_EVERY;
            for t in w.expired() {
                drive(w, t, Next::Close);
            }
            if w.accept_paused_until.is_some_and(|t| w.ctx.now >= t) && !w.ctx.draining {
                w.accept_paused_until = None;
                watch_listener()?;
            }
        }
        // Shaped connections whose wait is over, or whose chunk the shaper filled, send again.
        for token in w.shaper_wakeups() {
            if w.conns
                .get_mut(token)
                .is_some_and(|c| c.want == Next::Write)
            {
                drive(w, token, Next::Write);
            }
        }
        // Connections that used their turn continue now, after everyone else's events.
        for token in std::mem::take(&mut w.ready) {
            if let Some(c) = w.conns.get_mut(token) {
                let want = c.want;
                drive(w, token, want);
            }
        }
        w.arm_shaper_poll();
        w.ctx.flush_credits();
        if w.finished() {
            return Ok(());
        }
    }
}

fn on_wake(w: &mut Worker, ep: i32) {
    sys::eventfd_drain(w.wake_fd());
    while let Ok(reply) = w.inbox.try_recv() {
        let token = reply.conn;
        if let Some(c) = w.conns.get_mut(token) {
            let next = c.on_auth(&mut w.ctx, reply);
            drive(w, token, next);
        }
    }
    if w.drain_requested() {
        if let Some(l) = w.listener.take() {
            let _ = ctl(ep, libc::EPOLL_CTL_DEL, l.as_raw_fd(), 0, 0);
        }
        for t in w.begin_drain() {
            drive(w, t, Next::Close);
        }
    }
}

fn accept_burst(w: &mut Worker, ep: i32) {
    let Some(listen_fd) = w.listener.as_ref().map(|l| l.as_raw_fd()) else {
        return;
    };
    for _ in 0..128 {
        let fd = match sys::accept(listen_fd) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE)
                        | Some(libc::ENFILE)
                        | Some(libc::ENOBUFS)
                        | Some(libc::ENOMEM)
                ) =>
            {
                tracing::warn!(error = %e, "accept: out of descriptors; pausing accepts");
                w.ctx.stats.add(&w.ctx.stats.accept_backoffs, 1);
                let _ = ctl(ep, libc::EPOLL_CTL_DEL, listen_fd, 0, 0);
                w.accept_paused_until = Some(w.ctx.now + EMFILE_BACKOFF);
                w.next_sweep = w.next_sweep.min(w.ctx.now + EMFILE_BACKOFF);
                return;
            }
            Err(_) => continue,
        };
        if w.at_capacity() {
            w.refuse_over_cap(fd);
            continue;
        }
        let now = w.ctx.now;
        let ctx = &w.ctx;
        let token = w.conns.insert(|t| Conn::new(fd, t, now, ctx));
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        if ctl(ep, libc::EPOLL_CTL_ADD, fd, flags as u32, token).is_err() {
            w.conns.remove(token);
            sys::close(fd);
            continue;
        }
        // Most clients send the request right after connecting: try reading at once.
        drive(w, token, Next::Read);
    }
}

/// Sends one connection may make in a row before it yields to the others.
const SEND_BUDGET: u32 = 8;

/// Carry out what a connection asked for until it has to wait (or used its turn: then it is
/// queued in `ready` and resumed after this round of events).
fn drive(w: &mut Worker, token: u64, mut next: Next) {
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
                    SendPlan::Iov { len, more: false } => {
                        (sys::sendmsg(c.fd, &c.iov[..c.msg.msg_iovlen]), len)
                    }
                    SendPlan::Iov { len, more: true } => {
                        (sys::sendmsg_more(c.fd, &c.iov[..c.msg.msg_iovlen]), len)
                    }
                    SendPlan::File { fd, offset, len } => {
                        (sys::sendfile(c.fd, fd, offset, len), len)
                    }
                    SendPlan::Wait(at) => {
                        c.shaper_wait = Some(at);
                        w.timers.push(std::cmp::Reverse((at, token)));
                        return;
                    }
                };
                if matches!(res, Ok(n) if n < len) {
                    c.writable = false;
                }
                c.on_sent(&mut w.ctx, res)
            }
            Next::Close => {
                c.on_close(&mut w.ctx);
                if let Some(c) = w.conns.remove(token) {
                    sys::close(c.fd);
                }
                return;
            }
            Next::Read | Next::Write | Next::Park => return,
        };
    }
}
