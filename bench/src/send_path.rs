//! Send-path measurement for issue 2: which way should weir move a memory-mapped body to a socket?
//!
//! Loopback only. Creates a file of incompressible bytes (default 1 GiB), reads it once so it is in
//! the page cache, maps it (memmap2, populated), then for each method sends the whole file over
//! loopback TCP to a reader thread that reads into a 1 MiB buffer and discards (counting bytes,
//! and in a separate verification pass comparing every byte with the mapping).
//!
//! Methods (one sender thread; io_uring methods use one ring on that thread):
//! - `uring-send`      IORING_OP_SEND from the mapping, one send in flight per connection
//! - `uring-send-zc`   IORING_OP_SEND_ZC from the mapping (result CQE, then notification CQE)
//! - `uring-splice`    IORING_OP_SPLICE file -> pipe -> socket, two linked SQEs per chunk
//! - `splice`          splice(2) file -> pipe -> socket in a blocking loop
//! - `sendfile`        sendfile(2) (blocking loop; epoll + non-blocking with several connections)
//! - `send`            send(2) from the mapping (same)
//!
//! With `--conns N` the file is cut into N equal slices, one per connection (the download-manager
//! case); the sender drives all of them from one thread and one epoll reader thread drains them.
//!
//! This is a lab measurement of the kernel's send paths, not of weir: it drives its own sockets
//! with its own small event loops (io_uring, epoll, blocking), so it lives in the harness, not in
//! the server crate. Its answer is what chose weir's default `--send-path mmap`.
//!
//! Run: `weir-bench send-path --out results/DATE-send-path` (release build)

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use memmap2::{Mmap, MmapOptions};
use serde::{Deserialize, Serialize};

/// `IORING_SEND_ZC_REPORT_USAGE` (6.2): the notification CQE says whether the kernel copied.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in the notification's `res` when the data was copied.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: f64 = (1u64 << 30) as f64;

/// `weir-bench send-path` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: usize,
    /// Timed runs per configuration (order alternates forward/backward).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Connection count for the multi-connection round (0 skips it).
    #[arg(long, default_value_t = 40)]
    pub conns: usize,
    /// Directory for the temporary file (it must have room for it).
    #[arg(long, default_value = "/tmp")]
    pub dir: PathBuf,
    /// Write runs.json, runs.csv and summary.json here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the byte-for-byte verification pass.
    #[arg(long)]
    pub no_verify: bool,
    /// Only run configurations whose label contains this string.
    #[arg(long)]
    pub only: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Method {
    UringSend,
    UringSendZc,
    UringSplice,
    Splice,
    Sendfile,
    Send,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::UringSend => "uring-send",
            Method::UringSendZc => "uring-send-zc",
            Method::UringSplice => "uring-splice",
            Method::Splice => "splice",
            Method::Sendfile => "sendfile",
            Method::Send => "send",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Config {
    method: Method,
    chunk: usize,
    conns: usize,
}

impl Config {
    fn label(&self) -> String {
        format!(
            "{} {} x{}",
            self.method.name(),
            human(self.chunk),
            self.conns
        )
    }
}

fn human(n: usize) -> String {
    if n.is_multiple_of(MIB) {
        format!("{}M", n / MIB)
    } else {
        format!("{}K", n / KIB)
    }
}

/// Counters the sender reports besides time.
#[derive(Default, Debug, Clone, Copy, Serialize, Deserialize)]
struct SendStats {
    /// Send/splice/sendfile operations issued (SQEs or syscalls).
    ops: u64,
    /// Operations that moved fewer bytes than asked.
    short: u64,
    /// SEND_ZC notifications received.
    zc_notifs: u64,
    /// SEND_ZC notifications that reported the kernel copied the data anyway.
    zc_copied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunResult {
    label: String,
    method: Method,
    chunk: usize,
    conns: usize,
    run: usize,
    bytes: u64,
    wall_s: f64,
    gb_per_s: f64,
    sender_cpu_s: f64,
    reader_cpu_s: f64,
    process_cpu_s: f64,
    machine_busy_s: f64,
    machine_softirq_s: f64,
    loadavg_1m: f64,
    #[serde(flatten)]
    stats: SendStats,
}

/// Runs every configuration `args` selects and writes `runs.json`, `runs.csv` and `summary.json`.
pub fn run(args: Args) -> Result<()> {
    let header = crate::report::Header::start("send-path", Path::new(""));
    let size = args.size_mib * MIB;

    // Every method on one connection at three chunk sizes; splice only up to 1 MiB, the
    // unprivileged pipe-max-size. Then the multi-connection round.
    let sends = [
        Method::UringSend,
        Method::UringSendZc,
        Method::Sendfile,
        Method::Send,
    ];
    let splices = [Method::UringSplice, Method::Splice];
    let grid = |chunks: &[usize], methods: &[Method], conns: usize| -> Vec<Config> {
        chunks
            .iter()
            .flat_map(|&chunk| {
                methods.iter().map(move |&method| Config {
                    method,
                    chunk,
                    conns,
                })
            })
            .collect()
    };
    let mut configs = Vec::new();
    for chunk in [256 * KIB, MIB, 4 * MIB] {
        configs.extend(grid(&[chunk], &sends, 1));
        if chunk <= MIB {
            configs.extend(grid(&[chunk], &splices, 1));
        }
    }
    if args.conns > 1 {
        configs.extend(grid(&[256 * KIB, MIB], &sends, args.conns));
    }
    if let Some(only) = &args.only {
        configs.retain(|c| c.label().contains(only.as_str()));
    }

    let probe = probe_send_zc();
    eprintln!("kernel SEND_ZC support: {probe}");
    if !probe {
        configs.retain(|c| c.method != Method::UringSendZc);
    }

    let (file, map, sum) = make_file(&args.dir, size)?;
    eprintln!(
        "file: {} MiB in {}, read-back sum {sum:016x}",
        args.size_mib,
        args.dir.display()
    );

    if !args.no_verify {
        for cfg in &configs {
            let r = run_one(&map, &file, cfg, true, 0)
                .with_context(|| format!("verification run of {}", cfg.label()))?;
            eprintln!("verified {:<24} {:>6.2} GB/s", cfg.label(), r.gb_per_s);
        }
    }

    let mut results = Vec::new();
    for run in 0..args.runs {
        let order: Vec<&Config> = if run.is_multiple_of(2) {
            configs.iter().collect()
        } else {
            configs.iter().rev().collect()
        };
        for cfg in order {
            let r = run_one(&map, &file, cfg, false, run)
                .with_context(|| format!("run {run} of {}", cfg.label()))?;
            eprintln!(
                "run {run} {:<24} {:>6.2} GB/s  sender {:.3} s  process {:.3} s  load {:.2}",
                r.label, r.gb_per_s, r.sender_cpu_s, r.process_cpu_s, r.loadavg_1m
            );
            results.push(r);
        }
    }

    let summary = summarize(&configs, &results);
    let table = table(&summary);
    match &args.out {
        Some(out) => {
            write_outputs(out, &results)?;
            crate::report::write_simple(
                out,
                header,
                "Send path: a mapped file to loopback sockets (issue 2)",
                &table,
                &format!(
                    "{} MiB file, {} runs per configuration (order alternating), {} connections in the multi-connection round. CPU is getrusage of the sender thread, the reader thread and the whole process. Raw: `runs.json`, `runs.csv`.\n",
                    args.size_mib, args.runs, args.conns
                ),
                &results,
            )?;
        }
        None => println!("{table}"),
    }
    Ok(())
}

fn probe_send_zc() -> bool {
    let Ok(ring) = IoUring::new(8) else {
        return false;
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return false;
    }
    probe.is_supported(opcode::SendZc::CODE)
}

/// Creates the test file (xorshift bytes: incompressible), reads it back once so every page is
/// in the page cache, and maps it with the page tables populated (the steady state of a file that
/// is served repeatedly).
fn make_file(dir: &std::path::Path, size: usize) -> Result<(File, Mmap, u64)> {
    let free = free_bytes(dir)?;
    if free < size as u64 + 256 * MIB as u64 {
        bail!(
            "{} has {} MiB free, need {} MiB",
            dir.display(),
            free >> 20,
            (size >> 20) + 256
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("weir-send-path-")
        .tempfile_in(dir)?;
    // The file stays open after unlinking; nobody else can reach it.
    let (mut file, path) = tmp.into_parts();
    drop(path);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 4 * MIB];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        file.write_all(&block[..n])?;
        left -= n;
    }
    file.sync_all()?;
    let mut reader = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let mut sum = 0u64;
    loop {
        let n = reader.read(&mut block)?;
        if n == 0 {
            break;
        }
        for word in block[..n].chunks_exact(8) {
            sum = sum
                .wrapping_mul(31)
                .wrapping_add(u64::from_le_bytes(word.try_into().unwrap()));
        }
    }
    // SAFETY: the file was created by this process with a random name, unlinked at once, and is
    // never written or truncated after this point, so the mapping's contents cannot change.
    let map = unsafe { MmapOptions::new().len(size).populate().map(&file)? };
    Ok((file, map, sum))
}

fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// CPU time (user + system) of the calling thread or the whole process.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain old data; zeroed is a valid value for it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", io::Error::last_os_error());
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Machine-wide (busy, softirq) CPU seconds from /proc/stat: every task on the machine, including
/// other users' work, so only a rough cross-check of the process figures.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = stat.lines().next().unwrap_or("");
    let f: Vec<f64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 8 {
        return (f64::NAN, f64::NAN);
    }
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // user nice system idle iowait irq softirq steal
    ((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / hz, f[6] / hz)
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// One connection's share of the file.
struct Slice {
    sock: TcpStream,
    off: usize,
    len: usize,
}

/// One timed transfer of the whole file with `cfg`.
fn run_one(map: &Mmap, file: &File, cfg: &Config, verify: bool, run: usize) -> Result<RunResult> {
    let size = map.len();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(cfg.conns);
    let mut readers = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        let off = size * i / cfg.conns;
        let end = size * (i + 1) / cfg.conns;
        // Several connections on one sender thread need non-blocking sockets and epoll; io_uring
        // and the one-connection loops use blocking sockets (io_uring polls internally; a
        // non-blocking socket would hand EAGAIN back instead).
        let nonblocking = cfg.conns > 1 && matches!(cfg.method, Method::Sendfile | Method::Send);
        server.set_nonblocking(nonblocking)?;
        client.set_nonblocking(true)?;
        senders.push(Slice {
            sock: server,
            off,
            len: end - off,
        });
        readers.push(Slice {
            sock: client,
            off,
            len: end - off,
        });
    }
    drop(listener);

    let barrier = Barrier::new(3);
    let load = loadavg();
    let proc0 = cpu_seconds(libc::RUSAGE_SELF);
    let (busy0, softirq0) = machine_cpu();
    let (sent, reader) = std::thread::scope(|s| {
        let sender = s.spawn(|| -> Result<(Instant, f64, SendStats)> {
            barrier.wait();
            let cpu0 = cpu_seconds(libc::RUSAGE_THREAD);
            let t0 = Instant::now();
            let stats = send_all(cfg, map, file, senders)?;
            Ok((t0, cpu_seconds(libc::RUSAGE_THREAD) - cpu0, stats))
        });
        let reader = s.spawn(|| {
            barrier.wait();
            read_all(map, readers, verify)
        });
        barrier.wait();
        let sent = sender.join().expect("sender panicked");
        let read = reader.join().expect("reader panicked");
        (sent, read)
    });
    let process_cpu_s = cpu_seconds(libc::RUSAGE_SELF) - proc0;
    let (busy1, softirq1) = machine_cpu();
    let (t0, sender_cpu_s, stats) = sent?;
    let (t_end, reader_cpu_s, bytes) = reader?;
    if bytes != size as u64 {
        bail!("reader counted {bytes} bytes, expected {size}");
    }
    let wall_s = t_end.duration_since(t0).as_secs_f64();
    Ok(RunResult {
        label: cfg.label(),
        method: cfg.method,
        chunk: cfg.chunk,
        conns: cfg.conns,
        run,
        bytes,
        wall_s,
        gb_per_s: bytes as f64 / wall_s / 1e9,
        sender_cpu_s,
        reader_cpu_s,
        process_cpu_s,
        machine_busy_s: busy1 - busy0,
        machine_softirq_s: softirq1 - softirq0,
        loadavg_1m: load,
        stats,
    })
}

/// Reads every connection to EOF with one epoll loop into a 1 MiB buffer; returns the time the
/// last byte arrived, this thread's CPU seconds and the byte count. With `verify`, every byte is
/// compared with the mapping at the slice's offset.
fn read_all(map: &Mmap, mut conns: Vec<Slice>, verify: bool) -> Result<(Instant, f64, u64)> {
    let cpu0 = cpu_seconds(libc::RUSAGE_THREAD);
    let ep = epoll_all(&conns, libc::EPOLLIN)?;
    let mut got = vec![0usize; conns.len()];
    let mut eof = vec![false; conns.len()];
    let mut buf = vec![0u8; MIB];
    let mut open = conns.len();
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    let mut total = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len().max(1)];
    while open > 0 {
        for &i in &ready {
            // A connection at EOF can still be reported (HUP); count its EOF once.
            if eof[i] {
                continue;
            }
            let c = &mut conns[i];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        if got[i] != c.len {
                            bail!("connection {i}: EOF after {} of {} bytes", got[i], c.len);
                        }
                        eof[i] = true;
                        open -= 1;
                        break;
                    }
                    Ok(n) => {
                        if verify {
                            let at = c.off + got[i];
                            if got[i] + n > c.len || buf[..n] != map[at..at + n] {
                                bail!("connection {i}: data mismatch near offset {at}");
                            }
                        }
                        got[i] += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        ready.clear();
        if open == 0 {
            break;
        }
        let n = epoll_wait(&ep, &mut events)?;
        ready.extend(events[..n].iter().map(|e| e.u64 as usize));
    }
    let end = Instant::now();
    Ok((end, cpu_seconds(libc::RUSAGE_THREAD) - cpu0, total))
}

fn send_all(cfg: &Config, map: &Mmap, file: &File, conns: Vec<Slice>) -> Result<SendStats> {
    match (cfg.method, cfg.conns) {
        (Method::UringSend, _) => uring_send(map, conns, cfg.chunk, false),
        (Method::UringSendZc, _) => uring_send(map, conns, cfg.chunk, true),
        (Method::UringSplice, 1) => uring_splice(file, conns, cfg.chunk),
        (Method::Splice, 1) => splice_loop(file, conns, cfg.chunk),
        (Method::Sendfile | Method::Send, 1) => {
            blocking_loop(cfg.method, map, file, conns, cfg.chunk)
        }
        (Method::Sendfile | Method::Send, _) => epoll_loop(cfg.method, map, file, conns, cfg.chunk),
        (m, n) => bail!("{} is only measured with one connection, not {n}", m.name()),
    }
}

/// Builds a ring the way weir's driver does (COOP_TASKRUN + SINGLE_ISSUER where available).
fn ring(entries: u32) -> Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries * 16)
        .setup_coop_taskrun()
        .setup_single_issuer();
    Ok(b.build(entries).or_else(|_| IoUring::new(entries))?)
}

/// SEND or SEND_ZC from the mapping: one send in flight per connection (a TCP stream must stay
/// ordered); a short send resubmits the remainder. With SEND_ZC the next send goes out after the
/// result CQE; the pages stay pinned until the notification CQE, which we wait for before
/// returning.
fn uring_send(map: &Mmap, conns: Vec<Slice>, chunk: usize, zc: bool) -> Result<SendStats> {
    struct St {
        off: usize,
        end: usize,
        in_flight: bool,
        notifs: u32,
    }
    let mut stats = SendStats::default();
    let mut ring = ring(256)?;
    let mut st: Vec<St> = conns
        .iter()
        .map(|c| St {
            off: c.off,
            end: c.off + c.len,
            in_flight: false,
            notifs: 0,
        })
        .collect();
    let base = map.as_ptr();
    let mut todo: Vec<usize> = (0..conns.len()).collect();
    let mut busy = conns.len();
    while busy > 0 {
        for &i in &todo {
            let s = &mut st[i];
            let len = chunk.min(s.end - s.off) as u32;
            // SAFETY: `s.off + len <= map.len()`, so the range lies inside the mapping.
            let buf = unsafe { base.add(s.off) };
            let fd = types::Fd(conns[i].sock.as_raw_fd());
            let entry = if zc {
                opcode::SendZc::new(fd, buf, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .zc_flags(SEND_ZC_REPORT_USAGE)
                    .build()
            } else {
                opcode::Send::new(fd, buf, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            };
            // SAFETY: the buffer lies in the read-only mapping (see above) and the kernel only
            // reads it. `map` is owned by `main` and outlives this thread (scoped threads are
            // joined before `main` drops it). On success this function returns only after every
            // result CQE and, for SEND_ZC, every notification CQE has been reaped; on an error
            // return the ring is dropped first, and ring teardown cancels and waits out whatever is
            // still in flight, while `map` is still mapped. Either way no request reads memory
            // after it is unmapped, and the sockets in `conns` outlive the ring. A full SQ is an
            // error from `push`, not UB.
            unsafe { ring.submission().push(&entry.user_data(i as u64)) }
                .context("submission queue full")?;
            s.in_flight = true;
            stats.ops += 1;
        }
        todo.clear();
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            let s = &mut st[i];
            if cqueue::notif(cqe.flags()) {
                s.notifs -= 1;
                stats.zc_notifs += 1;
                if cqe.result() as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    stats.zc_copied += 1;
                }
            } else {
                if cqueue::more(cqe.flags()) {
                    s.notifs += 1;
                }
                s.in_flight = false;
                let res = cqe.result();
                if res == -libc::EAGAIN || res == -libc::EINTR {
                    todo.push(i);
                    continue;
                }
                if res <= 0 {
                    bail!(
                        "send on connection {i}: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                let asked = chunk.min(s.end - s.off);
                if (res as usize) < asked {
                    stats.short += 1;
                }
                s.off += res as usize;
                if s.off < s.end {
                    todo.push(i);
                } else {
                    conns[i].sock.shutdown(Shutdown::Write)?;
                }
            }
            if !s.in_flight && s.off == s.end && s.notifs == 0 {
                busy -= 1;
            }
        }
    }
    Ok(stats)
}

fn pipe(capacity: usize) -> Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own; no pointers involved.
    let cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as libc::c_int) };
    if cap < 0 {
        return Err(io::Error::last_os_error()).context("F_SETPIPE_SZ");
    }
    Ok((r, w, cap as usize))
}

/// IORING_OP_SPLICE file -> pipe linked with pipe -> socket. A short first splice breaks the link
/// (the second completes with -ECANCELED); whatever is left in the pipe is drained with a lone
/// pipe -> socket splice before the next pair.
fn uring_splice(file: &File, conns: Vec<Slice>, chunk: usize) -> Result<SendStats> {
    let c = &conns[0];
    let (pr, pw, cap) = pipe(MIB)?;
    let chunk = chunk.min(cap);
    let mut stats = SendStats::default();
    let mut ring = ring(8)?;
    let (mut off, end) = (c.off, c.off + c.len);
    let mut in_pipe = 0usize;
    let sock = types::Fd(c.sock.as_raw_fd());
    while off < end || in_pipe > 0 {
        let mut entries = Vec::with_capacity(2);
        if in_pipe == 0 {
            let len = chunk.min(end - off) as u32;
            entries.push(
                opcode::Splice::new(
                    types::Fd(file.as_raw_fd()),
                    off as i64,
                    types::Fd(pw.as_raw_fd()),
                    -1,
                    len,
                )
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(1),
            );
            entries.push(
                opcode::Splice::new(types::Fd(pr.as_raw_fd()), -1, sock, -1, len)
                    .flags(libc::SPLICE_F_MORE)
                    .build()
                    .user_data(2),
            );
        } else {
            entries.push(
                opcode::Splice::new(types::Fd(pr.as_raw_fd()), -1, sock, -1, in_pipe as u32)
                    .flags(libc::SPLICE_F_MORE)
                    .build()
                    .user_data(2),
            );
        }
        // SAFETY: splice passes no user memory, only descriptors (file, pipe, socket), all of which
        // stay open until this function returns; we reap every CQE of this batch before the next.
        unsafe { ring.submission().push_multiple(&entries) }.context("submission queue full")?;
        stats.ops += entries.len() as u64;
        ring.submit_and_wait(entries.len())?;
        // Reap the whole batch before updating `in_pipe`: the pipe -> socket CQE may come first.
        let (mut filled, mut drained, mut seen) = (0usize, 0usize, 0usize);
        while seen < entries.len() {
            let Some(cqe) = ring.completion().next() else {
                ring.submit_and_wait(1)?;
                continue;
            };
            seen += 1;
            let res = cqe.result();
            match cqe.user_data() {
                1 if res > 0 => filled += res as usize,
                2 if res > 0 => drained += res as usize,
                2 if res == -libc::ECANCELED => {}
                _ => bail!(
                    "splice (op {}): {}",
                    cqe.user_data(),
                    io::Error::from_raw_os_error(-res)
                ),
            }
        }
        if in_pipe == 0 && filled < chunk.min(end - off) {
            stats.short += 1;
        }
        off += filled;
        in_pipe = in_pipe + filled - drained;
    }
    c.sock.shutdown(Shutdown::Write)?;
    Ok(stats)
}

/// splice(2) file -> pipe -> socket in a blocking loop.
fn splice_loop(file: &File, conns: Vec<Slice>, chunk: usize) -> Result<SendStats> {
    let c = &conns[0];
    let (pr, pw, cap) = pipe(MIB)?;
    let chunk = chunk.min(cap);
    let mut stats = SendStats::default();
    let mut off = c.off as libc::loff_t;
    let end = (c.off + c.len) as libc::loff_t;
    while off < end {
        let len = chunk.min((end - off) as usize);
        // SAFETY: `off` is a valid loff_t the kernel advances; the other offset is null (pipe).
        let n = unsafe {
            libc::splice(
                file.as_raw_fd(),
                &mut off,
                pw.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        stats.ops += 1;
        if n <= 0 {
            bail!("splice file -> pipe: {}", io::Error::last_os_error());
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: both offsets are null (pipe and socket have none); no user memory involved.
            let m = unsafe {
                libc::splice(
                    pr.as_raw_fd(),
                    std::ptr::null_mut(),
                    c.sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                )
            };
            stats.ops += 1;
            if m <= 0 {
                bail!("splice pipe -> socket: {}", io::Error::last_os_error());
            }
            left -= m as usize;
        }
    }
    c.sock.shutdown(Shutdown::Write)?;
    Ok(stats)
}

/// One non-blocking step of sendfile(2) or send(2) for `conn`, at most `chunk` bytes from `*off`.
fn step(
    method: Method,
    map: &Mmap,
    file: &File,
    sock: RawFd,
    off: &mut usize,
    end: usize,
    chunk: usize,
) -> io::Result<usize> {
    let len = chunk.min(end - *off);
    let n = match method {
        Method::Sendfile => {
            let mut o = *off as libc::off_t;
            // SAFETY: `o` is a valid off_t for the duration of the call; no user buffer.
            unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut o, len) }
        }
        // SAFETY: `*off + len <= map.len()`, so the pointer and length lie inside the mapping,
        // which is borrowed (alive) for the duration of this synchronous call.
        _ => unsafe { libc::send(sock, map.as_ptr().add(*off).cast(), len, libc::MSG_NOSIGNAL) },
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *off += n as usize;
    Ok(n as usize)
}

/// sendfile(2) or send(2) in a blocking loop on one connection.
fn blocking_loop(
    method: Method,
    map: &Mmap,
    file: &File,
    conns: Vec<Slice>,
    chunk: usize,
) -> Result<SendStats> {
    let c = &conns[0];
    let mut stats = SendStats::default();
    let (mut off, end) = (c.off, c.off + c.len);
    while off < end {
        let asked = chunk.min(end - off);
        match step(method, map, file, c.sock.as_raw_fd(), &mut off, end, chunk) {
            Ok(0) => bail!("{} wrote 0 bytes", method.name()),
            Ok(n) => stats.short += u64::from(n < asked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        stats.ops += 1;
    }
    c.sock.shutdown(Shutdown::Write)?;
    Ok(stats)
}

/// sendfile(2) or send(2) over non-blocking sockets with edge-triggered epoll (what nginx does
/// with many connections on one worker).
fn epoll_loop(
    method: Method,
    map: &Mmap,
    file: &File,
    conns: Vec<Slice>,
    chunk: usize,
) -> Result<SendStats> {
    let mut stats = SendStats::default();
    let ep = epoll_all(&conns, libc::EPOLLOUT)?;
    let mut off: Vec<usize> = conns.iter().map(|c| c.off).collect();
    let mut open = conns.len();
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len()];
    while open > 0 {
        for &i in &ready {
            let end = conns[i].off + conns[i].len;
            while off[i] < end {
                let asked = chunk.min(end - off[i]);
                stats.ops += 1;
                match step(
                    method,
                    map,
                    file,
                    conns[i].sock.as_raw_fd(),
                    &mut off[i],
                    end,
                    chunk,
                ) {
                    Ok(0) => bail!("{} wrote 0 bytes", method.name()),
                    Ok(n) => stats.short += u64::from(n < asked),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
                if off[i] == end {
                    conns[i].sock.shutdown(Shutdown::Write)?;
                    open -= 1;
                }
            }
        }
        ready.clear();
        if open == 0 {
            break;
        }
        let n = epoll_wait(&ep, &mut events)?;
        ready.extend(
            events[..n]
                .iter()
                .map(|e| e.u64 as usize)
                .filter(|&i| off[i] < conns[i].off + conns[i].len),
        );
    }
    Ok(stats)
}

/// An epoll instance watching every connection's socket for `events`, edge-triggered, with the
/// connection's index as its data.
fn epoll_all(conns: &[Slice], events: libc::c_int) -> Result<OwnedFd> {
    let ep = epoll_create()?;
    for (i, c) in conns.iter().enumerate() {
        epoll_add(
            &ep,
            c.sock.as_raw_fd(),
            (events | libc::EPOLLET) as u32,
            i as u64,
        )?;
    }
    Ok(ep)
}

fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: no pointers; a negative result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn epoll_add(ep: &OwnedFd, fd: RawFd, events: u32, data: u64) -> Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

fn epoll_wait(ep: &OwnedFd, events: &mut [libc::epoll_event]) -> Result<usize> {
    loop {
        // SAFETY: `events` is a valid, writable array of `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                ep.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                10_000,
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        if n == 0 {
            bail!("epoll_wait: no progress for 10 s");
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    label: String,
    method: Method,
    chunk: usize,
    conns: usize,
    runs: usize,
    median_gb_per_s: f64,
    min_gb_per_s: f64,
    max_gb_per_s: f64,
    median_sender_cpu_s_per_gib: f64,
    median_reader_cpu_s_per_gib: f64,
    median_process_cpu_s_per_gib: f64,
    median_machine_busy_s_per_gib: f64,
    median_ops: u64,
    median_short: u64,
    zc_copied_fraction: Option<f64>,
}

fn median(v: Vec<f64>) -> f64 {
    crate::util::median_or_nan(&v)
}

/// The summary table of stored `runs.json` records (what `weir-bench report` shows).
pub fn table_from_runs(runs: &serde_json::Value) -> Result<String> {
    let results: Vec<RunResult> = serde_json::from_value(runs.clone())?;
    let mut configs: Vec<Config> = Vec::new();
    for r in &results {
        let c = Config {
            method: r.method,
            chunk: r.chunk,
            conns: r.conns,
        };
        if !configs.iter().any(|k| k.label() == c.label()) {
            configs.push(c);
        }
    }
    Ok(table(&summarize(&configs, &results)))
}

fn summarize(configs: &[Config], results: &[RunResult]) -> Vec<Summary> {
    configs
        .iter()
        .map(|cfg| {
            let rs: Vec<&RunResult> = results.iter().filter(|r| r.label == cfg.label()).collect();
            let per_gib = |f: fn(&RunResult) -> f64| {
                median(rs.iter().map(|r| f(r) / (r.bytes as f64 / GIB)).collect())
            };
            let gbps: Vec<f64> = rs.iter().map(|r| r.gb_per_s).collect();
            let notifs: u64 = rs.iter().map(|r| r.stats.zc_notifs).sum();
            let copied: u64 = rs.iter().map(|r| r.stats.zc_copied).sum();
            Summary {
                label: cfg.label(),
                method: cfg.method,
                chunk: cfg.chunk,
                conns: cfg.conns,
                runs: rs.len(),
                median_gb_per_s: median(gbps.clone()),
                min_gb_per_s: gbps.iter().copied().fold(f64::INFINITY, f64::min),
                max_gb_per_s: gbps.iter().copied().fold(0.0, f64::max),
                median_sender_cpu_s_per_gib: per_gib(|r| r.sender_cpu_s),
                median_reader_cpu_s_per_gib: per_gib(|r| r.reader_cpu_s),
                median_process_cpu_s_per_gib: per_gib(|r| r.process_cpu_s),
                median_machine_busy_s_per_gib: per_gib(|r| r.machine_busy_s),
                median_ops: median(rs.iter().map(|r| r.stats.ops as f64).collect()) as u64,
                median_short: median(rs.iter().map(|r| r.stats.short as f64).collect()) as u64,
                zc_copied_fraction: (notifs > 0).then(|| copied as f64 / notifs as f64),
            }
        })
        .collect()
}

/// The summary as a markdown table, one row per configuration.
fn table(summary: &[Summary]) -> String {
    let mut out = String::from(
        "| method | chunk | conns | median GB/s (min–max) | CPU s/GiB: sender thread | reader thread \
         | whole process | machine busy | ops | short | ZC copied |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summary {
        out += &format!(
            "| {} | {} | {} | {:.2} ({:.2}–{:.2}) | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} | {} |\n",
            s.method.name(),
            human(s.chunk),
            s.conns,
            s.median_gb_per_s,
            s.min_gb_per_s,
            s.max_gb_per_s,
            s.median_sender_cpu_s_per_gib,
            s.median_reader_cpu_s_per_gib,
            s.median_process_cpu_s_per_gib,
            s.median_machine_busy_s_per_gib,
            s.median_ops,
            s.median_short,
            s.zc_copied_fraction
                .map_or("–".to_string(), |f| format!("{:.0}%", f * 100.0)),
        );
    }
    out
}

fn write_outputs(out: &std::path::Path, results: &[RunResult]) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("runs.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let mut csv = String::from(
        "method,chunk,conns,run,bytes,wall_s,gb_per_s,sender_cpu_s,reader_cpu_s,process_cpu_s,machine_busy_s,machine_softirq_s,loadavg_1m,ops,short,zc_notifs,zc_copied\n",
    );
    for r in results {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.6},{:.4},{:.4},{:.4},{:.4},{:.2},{:.2},{:.2},{},{},{},{}\n",
            r.method.name(),
            r.chunk,
            r.conns,
            r.run,
            r.bytes,
            r.wall_s,
            r.gb_per_s,
            r.sender_cpu_s,
            r.reader_cpu_s,
            r.process_cpu_s,
            r.machine_busy_s,
            r.machine_softirq_s,
            r.loadavg_1m,
            r.stats.ops,
            r.stats.short,
            r.stats.zc_notifs,
            r.stats.zc_copied
        ));
    }
    std::fs::write(out.join("runs.csv"), csv)?;
    Ok(())
}
