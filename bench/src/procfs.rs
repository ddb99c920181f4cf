//! What the harness reads from /proc: CPU time and memory of a server's processes, their
//! children, and the kernel's TCP memory. Linux only, like weir.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs;

/// A sysconf(3) value, or `default` when the system does not say.
fn sysconf_or(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(default)
}

/// Clock ticks per second for /proc/PID/stat's utime and stime (USER_HZ, usually 100).
pub fn clk_tck() -> u64 {
    sysconf_or(libc::_SC_CLK_TCK, 100)
}

/// Bytes per page, the unit of /proc/net/sockstat's `mem`.
pub fn page_size() -> u64 {
    sysconf_or(libc::_SC_PAGESIZE, 4096)
}

/// The fields of /proc/PID/stat after the command name (which may contain spaces and ')').
fn stat_fields(pid: i32) -> Result<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let Some(end) = s.rfind(')') else {
        bail!("unexpected /proc/{pid}/stat: {s}")
    };
    Ok(s[end + 1..].split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a whole process (all its threads, living and exited; io_uring's io-wq
/// workers are threads of the process) in clock ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of stat(5); index 0 here is field 3 (state).
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// CPU seconds of a set of processes.
pub fn cpu_seconds(pids: &[i32]) -> Result<f64> {
    let mut ticks = 0;
    for &p in pids {
        ticks += cpu_ticks(p)?;
    }
    Ok(ticks as f64 / clk_tck() as f64)
}

/// PIDs whose parent is `ppid` (nginx's workers are children of its master).
pub fn children(ppid: i32) -> Vec<i32> {
    pids_where(|pid| {
        stat_fields(pid).is_ok_and(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(ppid))
    })
}

/// PIDs whose command name (`/proc/PID/comm`) starts with `prefix`, e.g. the kernel's
/// per-CPU `ksoftirqd/N` threads.
pub fn named(prefix: &str) -> Vec<i32> {
    pids_where(|pid| {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(prefix))
    })
}

/// The PIDs in /proc that `keep` accepts, in order.
fn pids_where(keep: impl Fn(i32) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if keep(pid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Resident memory of one or more processes, from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
}

impl Memory {
    pub fn of(pids: &[i32]) -> Result<Memory> {
        let mut m = Memory::default();
        for &p in pids {
            let s = fs::read_to_string(format!("/proc/{p}/status"))
                .with_context(|| format!("reading /proc/{p}/status"))?;
            for line in s.lines() {
                let mut it = line.split_whitespace();
                let (Some(k), Some(v)) = (it.next(), it.next()) else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "RssAnon:" => m.rss_anon_kib += v,
                    "RssFile:" => m.rss_file_kib += v,
                    "RssShmem:" => m.rss_shmem_kib += v,
                    _ => {}
                }
            }
        }
        Ok(m)
    }
}

/// Open file descriptors of a set of processes.
pub fn fd_count(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|p| {
            fs::read_dir(format!("/proc/{p}/fd"))
                .map(|d| d.count() as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// The TCP line of /proc/net/sockstat (the whole network namespace, not one process).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SockStat {
    pub tcp_inuse: u64,
    pub tcp_orphan: u64,
    pub tcp_tw: u64,
    pub tcp_alloc: u64,
    /// Pages charged to TCP socket buffers, both ends of every loopback connection included.
    pub tcp_mem_pages: u64,
}

impl SockStat {
    pub fn read() -> Result<SockStat> {
        let s = fs::read_to_string("/proc/net/sockstat")?;
        Self::parse(&s)
    }

    pub fn parse(s: &str) -> Result<SockStat> {
        let line = s
            .lines()
            .find(|l| l.starts_with("TCP:"))
            .context("no TCP line in /proc/net/sockstat")?;
        let toks: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| -> u64 {
            toks.iter()
                .position(|t| *t == k)
                .and_then(|i| toks.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(SockStat {
            tcp_inuse: get("inuse"),
            tcp_orphan: get("orphan"),
            tcp_tw: get("tw"),
            tcp_alloc: get("alloc"),
            tcp_mem_pages: get("mem"),
        })
    }
}

/// Queued bytes of the established IPv4 TCP connections to one server port, from /proc/net/tcp:
/// the server's ends (send queue: unsent + unacknowledged) and the clients' ends (receive queue).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PortQueues {
    pub server_sockets: u64,
    pub server_tx_queue_bytes: u64,
    pub client_sockets: u64,
    pub client_rx_queue_bytes: u64,
}

impl PortQueues {
    pub fn read(port: u16) -> Result<PortQueues> {
        let s = fs::read_to_string("/proc/net/tcp")?;
        Ok(Self::parse(&s, port))
    }

    pub fn parse(s: &str, port: u16) -> PortQueues {
        let mut q = PortQueues::default();
        let port_of = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        for line in s.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || f[3] != "01" {
                continue; // only ESTABLISHED connections
            }
            let (tx, rx) = f[4].split_once(':').unwrap_or(("0", "0"));
            let tx = u64::from_str_radix(tx, 16).unwrap_or(0);
            let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
            if port_of(f[1]) == Some(port) {
                q.server_sockets += 1;
                q.server_tx_queue_bytes += tx;
            } else if port_of(f[2]) == Some(port) {
                q.client_sockets += 1;
                q.client_rx_queue_bytes += rx;
            }
        }
        q
    }
}

/// The load average line, recorded before and after a run (the machine is shared).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tcp_line() {
        let s =
            "sockets: used 13\nTCP: inuse 1 orphan 0 tw 2 alloc 3 mem 334\nUDP: inuse 0 mem 0\n";
        let st = SockStat::parse(s).unwrap();
        assert_eq!(
            (st.tcp_inuse, st.tcp_tw, st.tcp_alloc, st.tcp_mem_pages),
            (1, 2, 3, 334)
        );
    }

    #[test]
    fn port_queues_split_server_and_client_ends() {
        let s = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
   1: 0100007F:1F90 0100007F:D431 01 00001000:00000000 00:00000000 00000000     0        0 2\n\
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000200 00:00000000 00000000     0        0 3\n\
   3: 0100007F:0050 0100007F:D432 01 00000010:00000000 00:00000000 00000000     0        0 4\n\
   4: 0100007F:1F90 0100007F:D433 06 00000010:00000000 00:00000000 00000000     0        0 4\n";
        let q = PortQueues::parse(s, 0x1F90);
        assert_eq!(q.server_sockets, 1);
        assert_eq!(q.server_tx_queue_bytes, 0x1000);
        assert_eq!(q.client_sockets, 1);
        assert_eq!(q.client_rx_queue_bytes, 0x200);
    }

    #[test]
    fn own_process_is_measurable() {
        let me = std::process::id() as i32;
        assert!(cpu_ticks(me).is_ok());
        assert!(Memory::of(&[me]).unwrap().rss_anon_kib > 0);
    }
}
