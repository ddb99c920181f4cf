//! The io_uring driver: one ring per worker thread.
//!
//! Accept (multishot on 5.19+, single-shot otherwise), readiness polls, gathered sends
//! (`SENDMSG`: response head and the first body bytes from the mapped file in one submission),
//! the wake eventfd and the sweep timer all go through the ring. A waiting connection owns no read
//! buffer: on 5.19+ (`--uring-features full`) it receives into the worker's provided-buffer
//! ring, on the 5.10 level with a plain `recv` once its poll fires.
//!
//! Opcodes are probed at start ([`probe`]); what needs a newer kernel is gated in [`Features`],
//! and `--uring-features minimal` forces the 5.10-level set so that path is tested here too.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::config::UringFeatures;

use super::conn::{Conn, Next};
use super::send::SendPlan;
use super::sys;
use super::worker::{Slab, Submit, Worker, EMFILE_BACKOFF, SEND_BUDGET, SWEEP_EVERY};

/// What this kernel lets the driver use.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// IORING_ACCEPT_MULTISHOT (5.19).
    pub multishot_accept: bool,
    /// IORING_SETUP_COOP_TASKRUN + SINGLE_ISSUER (5.19 / 6.0): fewer interrupts per completion.
    pub cheap_taskrun: bool,
    /// IORING_OP_SEND_ZC (6.0): probed and reported, not used (see the README's send-path numbers).
    pub send_zc: bool,
    /// Provided-buffer rings (5.19): RECV picks a buffer from a per-worker pool when data
    /// arrives, so a read costs no extra syscall and idle connections still own no buffer.
    pub buf_ring: bool,
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "multishot_accept={} coop_taskrun={} buf_ring={} send_zc_available={}",
            self.multishot_accept, self.cheap_taskrun, self.buf_ring, self.send_zc
        )
    }
}

/// Kernel release as (major, minor).
fn kernel_version() -> (u32, u32) {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one `utsname` into the live local `u`.
    if unsafe { sys::syscall!(uname(&mut u)) }.is_err() {
        return (0, 0);
    }
    let release: String = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The opcodes the driver needs on every kernel.
const NEEDED: [(&str, u8); 6] = [
    ("ACCEPT", opcode::Accept::CODE),
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("SENDMSG", opcode::SendMsg::CODE),
    ("TIMEOUT", opcode::Timeout::CODE),
    ("READ", opcode::Read::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
];

/// Opcodes `--uring-features full` uses (RECV) or reports (SEND_ZC) when the kernel has them.
const OPTIONAL: [(&str, u8); 2] = [
    ("RECV", opcode::Recv::CODE),
    ("SEND_ZC", opcode::SendZc::CODE),
];

/// One opcode as `weir check-system` reports it.
#[derive(Clone, Debug)]
pub struct OpcodeSupport {
    pub name: &'static str,
    /// The driver cannot run without it.
    pub required: bool,
    /// This kernel has it.
    pub present: bool,
}

/// A ring and the kernel's opcode table, or why io_uring does not work here.
fn probe_opcodes() -> Result<Probe, String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed (kernel older than 5.6?): {e}"))?;
    Ok(probe)
}

/// Every opcode the driver needs or may use, and whether this kernel has it.
pub fn opcode_report() -> Result<Vec<OpcodeSupport>, String> {
    let probe = probe_opcodes()?;
    let needed = NEEDED.iter().map(|&(name, code)| (name, code, true));
    let optional = OPTIONAL.iter().map(|&(name, code)| (name, code, false));
    Ok(needed
        .chain(optional)
        .map(|(name, code, required)| OpcodeSupport {
            name,
            required,
            present: probe.is_supported(code),
        })
        .collect())
}

/// Check that io_uring works here and has every opcode the driver needs.
pub fn probe(level: UringFeatures) -> Result<Features, String> {
    let probe = probe_opcodes()?;
    for (name, code) in NEEDED {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks {name}"));
        }
    }
    let (major, minor) = kernel_version();
    let at_least = |a: u32, b: u32| (major, minor) >= (a, b);
    let full = level == UringFeatures::Full;
    Ok(Features {
        multishot_accept: full && at_least(5, 19),
        cheap_taskrun: full && at_least(6, 0),
        send_zc: full && probe.is_supported(opcode::SendZc::CODE),
        buf_ring: full && at_least(5, 19) && probe.is_supported(opcode::Recv::CODE),
    })
}

// Operation kinds in the top 8 bits of user data; the low 56 bits carry a connection token.
const OP_ACCEPT: u64 = 1 << 56;
const OP_WAKE: u64 = 2 << 56;
const OP_TIMER: u64 = 3 << 56;
const OP_POLL: u64 = 4 << 56;
const OP_SEND: u64 = 5 << 56;
const OP_CANCEL: u64 = 6 << 56;
const OP_RECV: u64 = 7 << 56;
const OP_WPOLL: u64 = 8 << 56;
const OP_SHAPE_TIMER: u64 = 9 << 56;
const OP_MASK: u64 = 0xFF << 56;

/// Buffer group id of the worker's receive pool.
const BGID: u16 = 0;
/// Receive buffers in the pool and their size (512 KiB per worker; a buffer goes back as soon
/// as its bytes are parsed, and a head larger than one buffer arrives in several).
const RING_ENTRIES: u16 = 128;
const RING_BUF: usize = 4096;

/// A provided-buffer ring: the kernel takes a buffer when a RECV has data, weir gives it back
/// once the bytes are parsed.
///
/// The buffers are shared with the kernel, which writes into any buffer it holds at any time,
/// so they are never borrowed as a whole: weir keeps a raw pointer to the pool and forms a
/// slice only over one buffer the kernel handed back in a completion and will not write into
/// until [`BufRing::give_back`] returns it.
struct BufRing {
    /// INVARIANT: `RING_ENTRIES` entries, page-aligned (mmap), registered with the ring while
    /// the driver lives; unmapped only after the ring is dropped.
    entries: *mut types::BufRingEntry,
    /// INVARIANT: a private anonymous mapping of `POOL_BYTES` bytes (buffer `bid` at
    /// `bid * RING_BUF`) that the kernel writes into; unmapped only after the ring is dropped.
    bufs: NonNull<u8>,
    tail: u16,
}

/// Bytes of the ring's entries and of its buffer pool.
const ENTRIES_BYTES: usize = RING_ENTRIES as usize * std::mem::size_of::<types::BufRingEntry>();
const POOL_BYTES: usize = RING_ENTRIES as usize * RING_BUF;

/// An anonymous private read-write mapping of `bytes` (zeroed, page-aligned).
fn map_anonymous(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let entries = map_anonymous(ENTRIES_BYTES)?;
        let bufs = match map_anonymous(POOL_BYTES) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: unmapping the mapping made just above, not yet shared with anyone.
                unsafe { libc::munmap(entries.as_ptr().cast(), ENTRIES_BYTES) };
                return Err(e);
            }
        };
        let mut br = BufRing {
            entries: entries.as_ptr().cast(),
            bufs,
            tail: 0,
        };
        // SAFETY: `entries` is a fresh page-aligned mapping of RING_ENTRIES entries (zeroed, so
        // the tail starts at 0) that lives until `Drop`, after the ring is gone. (On error `br`
        // drops here and unmaps both; the ring never saw them.)
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                RING_ENTRIES,
                BGID,
                0,
            )?;
        }
        for bid in 0..RING_ENTRIES {
            br.give_back(bid);
        }
        Ok(br)
    }

    /// The bytes a completion reported in buffer `bid`.
    ///
    /// # Safety
    /// `bid` must come from a RECV completion not yet followed by `give_back(bid)`: the kernel
    /// then owns no claim on that buffer, so nothing writes into it while the slice lives.
    unsafe fn data(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < RING_ENTRIES);
        let start = usize::from(bid) * RING_BUF;
        // SAFETY: `start + min(len, RING_BUF)` is within the pool (`bid < RING_ENTRIES`), the
        // pool is mapped for the ring's life (INVARIANT), and the caller guarantees the kernel
        // handed this buffer back and does not write into it until it is given back.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(start), len.min(RING_BUF)) }
    }

    /// Return buffer `bid` to the kernel.
    fn give_back(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (RING_ENTRIES - 1));
        let addr = self.bufs.as_ptr() as u64 + (usize::from(bid) * RING_BUF) as u64;
        // The entry's fields are written through raw pointers, never through a `&mut` to the
        // whole entry: entry 0's last field is the ring's tail, which the kernel reads
        // concurrently (`struct io_uring_buf { __u64 addr; __u32 len; __u16 bid; __u16 resv; }`,
        // `resv` of entry 0 aliasing `io_uring_buf_ring.tail`).
        const _: () = assert!(std::mem::size_of::<types::BufRingEntry>() == 16);
        // SAFETY: `idx < RING_ENTRIES`, inside the mapping (see INVARIANT), and the offsets are
        // those of the kernel's struct above (16 bytes, asserted); the kernel reads entries only
        // up to the published tail, and this one is not yet published; `resv` is not touched.
        unsafe {
            let entry = self.entries.add(idx).cast::<u8>();
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(RING_BUF as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the registered ring; the kernel
        // reads it concurrently, so publish it with a release store.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the two mappings made in `new`; the ring that used them was
        // dropped first (`run` drops it before the pool), so the kernel no longer writes here.
        unsafe {
            libc::munmap(self.entries.cast(), ENTRIES_BYTES);
            libc::munmap(self.bufs.as_ptr().cast(), POOL_BYTES);
        }
    }
}

/// Buffers the ring's own operations point into; dropped after the ring (declared first).
struct Fixed {
    wake_buf: u64,
    timespec: types::Timespec,
    /// Timespecs of shaping wake-ups (the kernel copies a timespec when it takes the SQE;
    /// a few slots keep each one untouched until then).
    shape_ts: [types::Timespec; 8],
    shape_slot: usize,
}

struct Driver {
    ring: IoUring,
    features: Features,
    cqes: Vec<(u64, i32, u32)>,
    /// Declared after `ring`, so it is dropped (unmapped) after the ring is closed.
    bufs: Option<BufRing>,
    /// The earliest shaping wake-up armed in the ring.
    armed_wakeup: Option<Instant>,
}

pub fn run(mut w: Worker, features: Features) -> io::Result<()> {
    let mut fixed = Box::new(Fixed {
        wake_buf: 0,
        timespec: types::Timespec::new(),
        shape_ts: std::array::from_fn(|_| types::Timespec::new()),
        shape_slot: 0,
    });
    let mut builder = IoUring::builder();
    builder.setup_cqsize(16384);
    if features.cheap_taskrun {
        builder.setup_coop_taskrun().setup_single_issuer();
    }
    let ring = builder.build(4096).or_else(|_| IoUring::new(4096))?;
    let bufs = if features.buf_ring {
        match BufRing::new(&ring) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "no provided-buffer ring; reading with poll + recv");
                None
            }
        }
    } else {
        None
    };
    let mut d = Driver {
        ring,
        features,
        cqes: Vec::with_capacity(1024),
        bufs,
        armed_wakeup: None,
    };
    let result = event_loop(&mut w, &mut d, &mut fixed);
    // Teardown, whether the loop finished or failed: no connection (its boxed msghdr, iovecs
    // and response buffers) is freed while the kernel may still read it for a SENDMSG.
    let quiet = quiesce(&mut w, &mut d, &mut fixed);
    let Driver { ring, bufs, .. } = d;
    drop(ring);
    if quiet {
        drop(bufs);
        drop(fixed);
        drop(w);
    } else {
        // Operations still in flight after the ring is gone may yet touch these: leak them
        // (the worker is exiting) rather than free memory the kernel could write or read.
        tracing::error!("io_uring teardown: operations still in flight; leaking their buffers");
        std::mem::forget(bufs);
        std::mem::forget(fixed);
        std::mem::forget(w);
    }
    result
}

/// Before the ring and the connections go: shut down every connection with an operation in
/// flight (its poll, RECV or SENDMSG then completes with an error or an end of file) and reap
/// completions until none is left, waiting up to about two seconds. Returns false when some
/// are still in flight.
fn quiesce(w: &mut Worker, d: &mut Driver, fixed: &mut Fixed) -> bool {
    let busy = |w: &mut Worker| {
        w.conns
            .tokens()
            .into_iter()
            .any(|t| w.conns.get_mut(t).is_some_and(|c| c.in_flight > 0))
    };
    for t in w.conns.tokens() {
        if let Some(c) = w.conns.get_mut(t) {
            if c.in_flight > 0 {
                c.closing = true;
                sys::shutdown(c.sock.as_fd());
            }
        }
    }
    for _ in 0..20 {
        if !busy(w) {
            return true;
        }
        // A timer bounds each wait (5.10 has no timeout argument to io_uring_enter).
        d.arm_timer(Duration::from_millis(100), fixed);
        match d.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(_) => return false,
        }
        let cqes: Vec<(u64, i32, u32)> = d
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in cqes {
            let kind = ud & OP_MASK;
            if kind == OP_ACCEPT && res >= 0 {
                // SAFETY: a successful ACCEPT completion carries a new descriptor that nothing
                // else owns; dropping it closes it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            if matches!(kind, OP_POLL | OP_RECV | OP_SEND | OP_WPOLL) {
                if let Some(c) = w.conns.get_mut(ud & !OP_MASK) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
            }
            if kind == OP_RECV {
                if let (Some(b), Some(bid)) = (d.bufs.as_mut(), cqueue::buffer_select(flags)) {
                    b.give_back(bid);
                }
            }
        }
    }
    !busy(w)
}

impl Driver {
    /// Queue an entry, flushing the submission queue when it is full.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Accept on the plain listener (`tls` false) or the HTTPS one: the low bit of the user
    /// data says which.
    fn arm_accept(&mut self, listen_fd: i32, tls: bool) {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = if self.features.multishot_accept {
            opcode::AcceptMulti::new(types::Fd(listen_fd))
                .flags(flags)
                .build()
        } else {
            opcode::Accept::new(
                types::Fd(listen_fd),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(flags)
            .build()
        };
        // SAFETY: accept passes no buffers (null address pointers).
        unsafe { self.push(entry.user_data(OP_ACCEPT | u64::from(tls))) };
    }

    fn arm_wake(&mut self, fd: i32, fixed: &mut Fixed) {
        let entry = opcode::Read::new(types::Fd(fd), (&mut fixed.wake_buf as *mut u64).cast(), 8)
            .build()
            .user_data(OP_WAKE);
        // SAFETY: `fixed` is boxed and outlives the ring (dropped after it in `run`).
        unsafe { self.push(entry) };
    }

    /// Wake the loop at `at` for connections waiting on the shaper.
    fn arm_wakeup(&mut self, now: Instant, at: Instant, fixed: &mut Fixed) {
        let slot = fixed.shape_slot % fixed.shape_ts.len();
        fixed.shape_slot = fixed.shape_slot.wrapping_add(1);
        fixed.shape_ts[slot] = types::Timespec::from(at.saturating_duration_since(now));
        let entry = opcode::Timeout::new(&fixed.shape_ts[slot])
            .build()
            .user_data(OP_SHAPE_TIMER);
        // SAFETY: the timespec lives in the boxed `fixed`, which outlives the ring; the kernel
        // copies it when it takes the SQE, long before the slot comes round again.
        unsafe { self.push(entry) };
        self.armed_wakeup = Some(at);
    }

    fn arm_timer(&mut self, after: Duration, fixed: &mut Fixed) {
        fixed.timespec = types::Timespec::from(after);
        let entry = opcode::Timeout::new(&fixed.timespec)
            .build()
            .user_data(OP_TIMER);
        // SAFETY: the timespec lives in the boxed `fixed`, which outlives the ring, so the
        // pointer is valid whenever the kernel reads it. The kernel copies it when it takes the
        // entry (TIMEOUT's prep, at submission); a rewrite before then (a second timer pushed
        // in the same batch, as quiescing does) only changes the value that entry gets.
        unsafe { self.push(entry) };
    }
}

fn event_loop(w: &mut Worker, d: &mut Driver, fixed: &mut Fixed) -> io::Result<()> {
    for tls in [false, true] {
        if let Some(fd) = w.listener_fd(tls) {
            d.arm_accept(fd, tls);
        }
    }
    let wake_fd = w.wake_fd();
    d.arm_wake(wake_fd, fixed);
    d.arm_timer(SWEEP_EVERY, fixed);
    loop {
        match d.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        w.ctx.now = Instant::now();
        let mut cqes = std::mem::take(&mut d.cqes);
        cqes.extend(
            d.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        // Send completions first: each moves its connection's written offset in the worker's
        // map file, and until it does, a SIGKILL would leave bytes the kernel already took
        // unrecorded (the client may then hold them with no trace of them after a restart).
        // Nothing else in the batch delays that record.
        for sends in [true, false] {
            for &(ud, res, flags) in &cqes {
                if (ud & OP_MASK == OP_SEND) != sends {
                    continue;
                }
                let token = ud & !OP_MASK;
                match ud & OP_MASK {
                    OP_ACCEPT => on_accept(w, d, res, flags, token == 1),
                    OP_WAKE => {
                        w.on_wake(d);
                        if !w.ctx.draining || !w.conns.is_empty() {
                            d.arm_wake(wake_fd, fixed);
                        }
                    }
                    OP_TIMER => {
                        w.next_sweep = w.ctx.now;
                        let every = if w.accept_paused_until.is_some() {
                            EMFILE_BACKOFF
                        } else {
                            SWEEP_EVERY
                        };
                        d.arm_timer(every, fixed);
                    }
                    OP_POLL => {
                        let Some(c) = op_done(&mut w.conns, token) else {
                            continue;
                        };
                        let next = if res < 0 {
                            Next::Close
                        } else {
                            c.readable = true;
                            c.on_readable(&mut w.ctx)
                        };
                        d.drive(w, token, next);
                    }
                    OP_RECV => {
                        let bid = cqueue::buffer_select(flags);
                        let Some(c) = op_done(&mut w.conns, token) else {
                            if let (Some(b), Some(bid)) = (d.bufs.as_mut(), bid) {
                                b.give_back(bid);
                            }
                            continue;
                        };
                        let next = match (res, bid, d.bufs.as_mut()) {
                            // The peer's FIN (no buffer is taken for it).
                            (0, None, _) => c.feed(&mut w.ctx, &[]),
                            (n, Some(bid), Some(b)) if n >= 0 => {
                                // SAFETY: the kernel just handed `bid` back in this completion; it
                                // is given back only after `feed` is done with the bytes.
                                let data = unsafe { b.data(bid, n as usize) };
                                let next = c.feed(&mut w.ctx, data);
                                b.give_back(bid);
                                next
                            }
                            // The pool ran dry: read this one with poll + recv.
                            (n, _, _) if n == -libc::ENOBUFS => {
                                c.readable = true;
                                c.on_readable(&mut w.ctx)
                            }
                            _ => Next::Close,
                        };
                        d.drive(w, token, next);
                    }
                    OP_SHAPE_TIMER => d.armed_wakeup = None,
                    OP_WPOLL => {
                        let Some(_) = op_done(&mut w.conns, token) else {
                            continue;
                        };
                        let next = if res < 0 { Next::Close } else { Next::Write };
                        d.drive(w, token, next);
                    }
                    OP_SEND => {
                        let Some(c) = op_done(&mut w.conns, token) else {
                            continue;
                        };
                        let r = if res < 0 {
                            Err(io::Error::from_raw_os_error(-res))
                        } else {
                            Ok(res as usize)
                        };
                        let next = c.on_sent(&mut w.ctx, r);
                        d.drive(w, token, next);
                    }
                    _ => {}
                }
            }
        }
        cqes.clear();
        d.cqes = cqes;
        // Shaped connections whose wait is over, or whose chunk the shaper filled, send again;
        // arm the next wake-up.
        w.wake_shaped(d);
        w.arm_shaper_poll();
        if let Some(next) = w.next_timer() {
            if d.armed_wakeup.is_none_or(|armed| next < armed) {
                d.arm_wakeup(w.ctx.now, next, fixed);
            }
        }
        w.sweep(d);
        if w.end_iteration() {
            return Ok(());
        }
    }
}

/// An operation of connection `token` completed: count it, and free the connection if it was
/// closing and this was its last operation. Returns the connection when it lives on.
fn op_done(conns: &mut Slab, token: u64) -> Option<&mut Conn> {
    let c = conns.get_mut(token)?;
    c.in_flight -= 1;
    if c.closing {
        if c.in_flight == 0 {
            // Its last operation is over: free it (closing its socket).
            conns.remove(token);
        }
        return None;
    }
    conns.get_mut(token)
}

fn on_accept(w: &mut Worker, d: &mut Driver, res: i32, flags: u32, tls: bool) {
    let rearm = !cqueue::more(flags) || !d.features.multishot_accept;
    if res < 0 {
        if -res == libc::ECANCELED {
            // Cancelled by a pause or the drain: re-armed by `resume_accepting`, if ever.
            return;
        }
        if w.accept_failed(-res) {
            // Both listeners pause (the sweep re-arms both).
            d.cancel_accept();
            return;
        }
        if rearm && !w.ctx.draining {
            if let Some(fd) = w.listener_fd(tls) {
                d.arm_accept(fd, tls);
            }
        }
        return;
    }
    // SAFETY: a successful ACCEPT completion carries a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(res) };
    if rearm && !w.ctx.draining && w.accept_paused_until.is_none() {
        if let Some(lfd) = w.listener_fd(tls) {
            d.arm_accept(lfd, tls);
        }
    }
    if let Some(token) = w.admit(fd, tls) {
        d.drive(w, token, Next::Read);
    }
}

impl Driver {
    /// Cancel the accepts armed on both listeners.
    fn cancel_accept(&mut self) {
        for ud in [OP_ACCEPT, OP_ACCEPT | 1] {
            // SAFETY: cancel passes no buffers.
            unsafe { self.push(opcode::AsyncCancel::new(ud).build().user_data(OP_CANCEL)) };
        }
    }
}

impl Submit for Driver {
    /// Submit what a connection asked for.
    fn drive(&mut self, w: &mut Worker, token: u64, mut next: Next) {
        let d = self;
        let mut budget = SEND_BUDGET;
        loop {
            let Some(c) = w.conns.get_mut(token) else {
                return;
            };
            c.want = next;
            match next {
                Next::Read => {
                    let fd = types::Fd(c.sock.raw());
                    let entry = if d.bufs.is_some() {
                        opcode::Recv::new(fd, std::ptr::null_mut(), RING_BUF as u32)
                            .buf_group(BGID)
                            .build()
                            .flags(squeue::Flags::BUFFER_SELECT)
                            .user_data(OP_RECV | token)
                    } else {
                        opcode::PollAdd::new(fd, libc::POLLIN as u32)
                            .build()
                            .user_data(OP_POLL | token)
                    };
                    c.in_flight += 1;
                    // SAFETY: a poll passes no buffers; a buffer-select RECV writes only into
                    // the registered pool, which outlives the ring.
                    unsafe { d.push(entry) };
                    return;
                }
                Next::Write => match c.prepare_send(&mut w.ctx) {
                    SendPlan::Iov { more, .. } => {
                        let mut flags = libc::MSG_NOSIGNAL as u32;
                        if more {
                            flags |= libc::MSG_MORE as u32;
                        }
                        let entry =
                            opcode::SendMsg::new(types::Fd(c.sock.raw()), c.send_buf().msg())
                                .flags(flags)
                                .build()
                                .user_data(OP_SEND | token);
                        c.in_flight += 1;
                        // SAFETY: the msghdr and the iovecs it points to live in the boxed
                        // connection, and the bytes they describe are held by its response
                        // (see `SendBuf`'s invariant); the connection is freed only once
                        // `in_flight` drops to zero, and teardown waits for that (`quiesce`).
                        unsafe { d.push(entry) };
                        return;
                    }
                    SendPlan::File { fd, offset, len } => {
                        // io_uring has no sendfile: call it directly while the socket has room,
                        // and wait for POLLOUT through the ring when it has none (or when this
                        // connection used its turn).
                        let res = if budget == 0 {
                            Err(io::Error::from(io::ErrorKind::WouldBlock))
                        } else {
                            budget -= 1;
                            sys::sendfile(c.sock.as_fd(), fd, offset, len)
                        };
                        if matches!(&res, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                            // The grant waits with the connection, not in a lost send.
                            c.refund_grant(&mut w.ctx, 0);
                            let entry =
                                opcode::PollAdd::new(types::Fd(c.sock.raw()), libc::POLLOUT as u32)
                                    .build()
                                    .user_data(OP_WPOLL | token);
                            c.in_flight += 1;
                            // SAFETY: a poll passes no buffers.
                            unsafe { d.push(entry) };
                            return;
                        }
                        next = c.on_sent(&mut w.ctx, res);
                    }
                    SendPlan::Wait(at) => {
                        w.park_shaped(token, at);
                        return;
                    }
                },
                Next::Park => return,
                Next::Close => {
                    w.close(token);
                    return;
                }
            }
        }
    }

    fn stop_accepting(&mut self, _w: &mut Worker) {
        self.cancel_accept();
    }

    fn resume_accepting(&mut self, w: &mut Worker) {
        for tls in [false, true] {
            if let Some(fd) = w.listener_fd(tls) {
                self.arm_accept(fd, tls);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::config::ServeConfig;
    use crate::server::auth::AuthPool;
    use crate::server::worker::WorkerInit;

    /// A SENDMSG stuck on a client that reads nothing is in flight when the loop ends: teardown
    /// shuts the socket down and waits for its completion before anything is freed.
    #[test]
    fn teardown_waits_for_a_send_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _jobs) = AuthPool::detached();
        let (_tx, inbox) = crossbeam_channel::unbounded();
        let listener = sys::reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let mut w = Worker::new(WorkerInit {
            id: 0,
            cfg: Arc::new(ServeConfig::new(dir.path().into())),
            listener: Some(listener),
            tls_listener: None,
            certs: None,
            wake: Arc::new(sys::eventfd().unwrap()),
            inbox,
            secret: Arc::new(vec![1; 32]),
            resources: HashMap::new(),
            pool,
            draining: Arc::new(AtomicBool::new(false)),
            credit_sink: None,
            credit_watermark: None,
            stats: Arc::default(),
            shaper: weir_shaper::Shaper::new(Default::default()),
            rates: crate::server::shaping::LiveRates::new(
                weir_shaper::Rate::Unlimited,
                HashMap::new(),
            ),
            access_log: None,
        });
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let token = w.admit(OwnedFd::from(server), false).unwrap();

        let mut d = Driver {
            ring: IoUring::new(64).expect("io_uring"),
            features: Features {
                multishot_accept: false,
                cheap_taskrun: false,
                send_zc: false,
                buf_ring: false,
            },
            cqes: Vec::new(),
            bufs: None,
            armed_wakeup: None,
        };
        let mut fixed = Box::new(Fixed {
            wake_buf: 0,
            timespec: types::Timespec::new(),
            shape_ts: std::array::from_fn(|_| types::Timespec::new()),
            shape_slot: 0,
        });
        // 64 MiB: far more than the socket buffers hold, so the send stays in flight.
        let body = vec![5u8; 64 << 20];
        let iov = [libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        }];
        // SAFETY: an all-zero msghdr is valid; it then points at `iov`, which outlives the
        // send (this test waits for its completion below).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = 1;
        let c = w.conns.get_mut(token).unwrap();
        // Fill the socket's buffers first, so the SENDMSG finds no room and waits for some.
        loop {
            // SAFETY: `iov` points at the live `body`.
            match unsafe { sys::sendmsg(c.sock.as_fd(), &iov, false) } {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let entry = opcode::SendMsg::new(types::Fd(c.sock.raw()), &msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(OP_SEND | token);
        c.in_flight += 1;
        // SAFETY: `msg`, `iov` and `body` live until the end of the test, after `quiesce`
        // reaped this send's completion (asserted).
        unsafe { d.push(entry) };
        d.ring.submit().unwrap();
        // The client reads nothing: the send cannot complete by itself.
        client.write_all(b"x").unwrap();
        assert!(
            d.ring.completion().next().is_none(),
            "the send waits for room"
        );

        assert!(quiesce(&mut w, &mut d, &mut fixed), "the send completed");
        let c = w.conns.get_mut(token).unwrap();
        assert_eq!(c.in_flight, 0);
        assert!(c.closing);
        drop(d);
        drop(client);
    }
}
