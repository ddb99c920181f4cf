//! `weir check-system`: reads what this host gives a download server (kernel, io_uring, the
//! descriptor limit, the TCP sysctls) and says, line by line, whether it suits N concurrent
//! connections, what value is recommended, and the exact command that sets it.
//!
//! Reading ([`Facts::gather`]: `/proc`, the io_uring probe, the driver decision of
//! [`crate::server::pick_driver`]) is kept apart from judging ([`evaluate`], pure: values in,
//! verdicts out) so the rules are unit-tested on any machine.

use std::io::Write;

use serde::Serialize;

use crate::config::ServeConfig;
use crate::server::uring::{self, OpcodeSupport};

/// Descriptors weir needs besides one per connection: listeners, rings, eventfds, the store,
/// the content files (one per item part), logs.
pub const FD_RESERVE: u64 = 1024;

/// The `LimitNOFILE=` contrib/weir.service sets, recommended when it covers the connections.
pub const NOFILE_RECOMMENDED: u64 = 65536;

/// The listen backlog weir asks for; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u64 = 4096;

/// What `weir check-system` found on this host; `None` where a value could not be read.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// Each opcode the driver needs or may use, or why io_uring does not work here.
    pub opcodes: Result<Vec<OpcodeSupport>, String>,
    /// `kernel.io_uring_disabled` (Linux 6.6+; absent before).
    pub io_uring_disabled: Option<u64>,
    /// The driver `weir serve` would run and why, or why it could not start.
    pub driver: Result<(String, String), String>,
    /// RLIMIT_NOFILE (soft, hard) of this process.
    pub nofile: Option<(u64, u64)>,
    pub somaxconn: Option<u64>,
    pub tcp_tw_reuse: Option<u64>,
    pub ip_local_port_range: Option<(u64, u64)>,
    pub tcp_rmem: Option<[u64; 3]>,
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_mem` in pages: (low, pressure, high).
    pub tcp_mem: Option<[u64; 3]>,
    pub page_size: u64,
    /// Kernel socket memory one connection is expected to hold, bytes.
    pub per_connection_bytes: u64,
}

/// OK: fits N connections; WARN: change it (or know why not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Ok,
    Warn,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked: a sysctl name, `RLIMIT_NOFILE`, `kernel`, `io_uring`, `driver`.
    pub name: &'static str,
    pub found: String,
    pub recommended: String,
    pub verdict: Verdict,
    /// The exact command (or unit line) that sets the recommended value; empty when there is none.
    pub set: String,
    /// Why the recommendation, in a few words.
    pub note: String,
}

fn ok_if(cond: bool) -> Verdict {
    if cond {
        Verdict::Ok
    } else {
        Verdict::Warn
    }
}

fn triple(v: &[u64; 3]) -> String {
    format!("{} {} {}", v[0], v[1], v[2])
}

const UNREADABLE: &str = "unreadable";

/// Judges `facts` for `connections` concurrent client connections. Pure.
pub fn evaluate(facts: &Facts, connections: u64) -> Vec<Check> {
    let mut out = Vec::new();

    // Kernel: 5.10 has every opcode the driver needs; 5.19 adds multishot accept and
    // provided-buffer receives (`--uring-features full`).
    let version = facts.kernel.as_deref().map(parse_release);
    out.push(Check {
        name: "kernel",
        found: facts.kernel.clone().unwrap_or_else(|| UNREADABLE.into()),
        recommended: ">= 5.19 (5.10 minimum for io_uring)".into(),
        verdict: ok_if(version.is_some_and(|v| v >= (5, 10))),
        set: String::new(),
        note: match version {
            Some(v) if v >= (5, 19) => "io_uring full feature set".into(),
            Some(v) if v >= (5, 10) => {
                "io_uring 5.10 set (no multishot accept, no buffer ring)".into()
            }
            _ => "too old for weir's io_uring driver: epoll only".into(),
        },
    });

    let disable_fix = match facts.io_uring_disabled {
        Some(d) if d != 0 => "sysctl -w kernel.io_uring_disabled=0".to_string(),
        _ => String::new(),
    };
    out.push(match &facts.opcodes {
        Ok(ops) => {
            let missing: Vec<&str> = ops
                .iter()
                .filter(|o| o.required && !o.present)
                .map(|o| o.name)
                .collect();
            let list: Vec<String> = ops
                .iter()
                .map(|o| format!("{}{}", o.name, if o.present { "+" } else { "-" }))
                .collect();
            Check {
                name: "io_uring",
                found: format!("works; opcodes {}", list.join(" ")),
                recommended: "works, with ACCEPT POLL_ADD SENDMSG TIMEOUT READ ASYNC_CANCEL".into(),
                verdict: ok_if(missing.is_empty()),
                set: String::new(),
                note: if missing.is_empty() {
                    "every required opcode present (+ present, - absent; RECV and SEND_ZC optional)"
                        .into()
                } else {
                    format!("missing {}: epoll only", missing.join(" "))
                },
            }
        }
        Err(why) => Check {
            name: "io_uring",
            found: format!("does not work: {why}"),
            recommended: "works (kernel.io_uring_disabled=0; a seccomp profile allowing io_uring)"
                .into(),
            verdict: Verdict::Warn,
            set: disable_fix.clone(),
            note: "weir serves with epoll instead".into(),
        },
    });

    out.push(match &facts.driver {
        Ok((driver, why)) => Check {
            name: "driver",
            found: driver.clone(),
            recommended: "io_uring".into(),
            verdict: ok_if(driver.starts_with("io_uring")),
            set: if driver.starts_with("io_uring") {
                String::new()
            } else {
                disable_fix
            },
            note: why.clone(),
        },
        Err(why) => Check {
            name: "driver",
            found: format!("serve would not start: {why}"),
            recommended: "a driver this kernel supports (--driver auto)".into(),
            verdict: Verdict::Warn,
            set: "weir serve --driver auto".into(),
            note: String::new(),
        },
    });

    // One descriptor per connection plus the reserve; serve raises the soft limit to the hard
    // one at start, so the hard limit is what counts.
    let need_fd = connections + FD_RESERVE;
    let want_fd = need_fd.max(NOFILE_RECOMMENDED);
    out.push(Check {
        name: "RLIMIT_NOFILE",
        found: match facts.nofile {
            Some((soft, hard)) => format!("soft {soft}, hard {hard}"),
            None => UNREADABLE.into(),
        },
        recommended: format!("hard >= {need_fd} (serve raises soft to hard); {want_fd}"),
        verdict: ok_if(facts.nofile.is_some_and(|(_, hard)| hard >= need_fd)),
        set: format!("LimitNOFILE={want_fd} (systemd unit) or ulimit -n {want_fd} (shell)"),
        note: format!("one descriptor per connection + {FD_RESERVE}"),
    });

    out.push(Check {
        name: "net.core.somaxconn",
        found: show(facts.somaxconn),
        recommended: format!(">= {LISTEN_BACKLOG}"),
        verdict: ok_if(facts.somaxconn.is_some_and(|v| v >= LISTEN_BACKLOG)),
        set: format!("sysctl -w net.core.somaxconn={LISTEN_BACKLOG}"),
        note: format!("caps weir's listen backlog of {LISTEN_BACKLOG}: bursts of connects"),
    });

    out.push(Check {
        name: "net.ipv4.tcp_tw_reuse",
        found: show(facts.tcp_tw_reuse),
        recommended: "1".into(),
        verdict: ok_if(facts.tcp_tw_reuse.is_some_and(|v| v == 1)),
        set: "sysctl -w net.ipv4.tcp_tw_reuse=1".into(),
        note: "outgoing connections (webhooks, weir-load on this host) reuse TIME_WAIT ports"
            .into(),
    });

    let range_ok = facts
        .ip_local_port_range
        .is_some_and(|(lo, hi)| hi >= lo && hi - lo + 1 >= connections);
    out.push(Check {
        name: "net.ipv4.ip_local_port_range",
        found: match facts.ip_local_port_range {
            Some((lo, hi)) => format!("{lo} {hi}"),
            None => UNREADABLE.into(),
        },
        recommended: format!("at least {connections} ports; 1024 65535"),
        verdict: ok_if(range_ok),
        set: "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into(),
        note: "a client host (weir-load) opens one local port per connection to one address".into(),
    });

    // Buffer ceilings: Linux's own defaults; a lower ceiling caps one download's speed at
    // ceiling / RTT (4 MiB / 100 ms = 40 MiB/s).
    for (name, found, rec) in [
        ("net.ipv4.tcp_rmem", facts.tcp_rmem, [4096, 131072, 6291456]),
        ("net.ipv4.tcp_wmem", facts.tcp_wmem, [4096, 16384, 4194304]),
    ] {
        // A host already above Linux's ceiling keeps its own values.
        let rec = match found {
            Some(v) if v[2] >= rec[2] => v,
            _ => rec,
        };
        out.push(Check {
            name,
            found: found
                .as_ref()
                .map(triple)
                .unwrap_or_else(|| UNREADABLE.into()),
            recommended: format!("max >= {}; {}", rec[2], triple(&rec)),
            verdict: ok_if(found.is_some_and(|v| v[2] >= rec[2])),
            set: format!("sysctl -w {name}=\"{}\"", triple(&rec)),
            note: "the ceiling caps one connection's speed at max / RTT".into(),
        });
    }

    // tcp_mem: past `pressure` the kernel shrinks every socket's buffers; past `high` sends fail.
    let page = facts.page_size.max(1);
    let need_pages = (connections * facts.per_connection_bytes).div_ceil(page);
    let rec = match facts.tcp_mem {
        Some([low, pressure, high]) => [
            low,
            pressure.max(need_pages),
            high.max(need_pages + need_pages / 2),
        ],
        None => [need_pages / 2, need_pages, need_pages + need_pages / 2],
    };
    out.push(Check {
        name: "net.ipv4.tcp_mem",
        found: match facts.tcp_mem {
            Some(v) => format!("{} pages", triple(&v)),
            None => UNREADABLE.into(),
        },
        recommended: format!(
            "pressure >= {need_pages} pages ({connections} x {} KiB); {}",
            facts.per_connection_bytes / 1024,
            triple(&rec)
        ),
        verdict: ok_if(facts.tcp_mem.is_some_and(|v| v[1] >= need_pages)),
        set: format!("sysctl -w net.ipv4.tcp_mem=\"{}\"", triple(&rec)),
        note: format!(
            "page {page} B; a shaped connection holds about 2 x --min-grant (SO_SNDBUF, doubled \
             by the kernel), an unshaped one up to tcp_wmem max"
        ),
    });
    out
}

fn show(v: Option<u64>) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| UNREADABLE.into())
}

/// `6.1.0-18-amd64` -> (6, 1).
fn parse_release(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Whitespace-separated numbers of a `/proc/sys` file.
fn numbers(text: &str) -> Option<Vec<u64>> {
    text.split_whitespace().map(|w| w.parse().ok()).collect()
}

fn sysctl(path: &str) -> Option<Vec<u64>> {
    numbers(&std::fs::read_to_string(format!("/proc/sys/{path}")).ok()?)
}

fn sysctl_one(path: &str) -> Option<u64> {
    sysctl(path)?.first().copied()
}

fn sysctl_three(path: &str) -> Option<[u64; 3]> {
    sysctl(path)?.try_into().ok()
}

/// "Max open files  1024  524288  files" in `/proc/self/limits`.
fn parse_nofile(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let soft = it.next()?;
    let hard = it.next()?;
    let parse = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((parse(soft)?, parse(hard)?))
}

/// The page size tcp_mem counts in (from `/proc/self/smaps`' `KernelPageSize`; 4096 otherwise).
fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4096)
}

impl Facts {
    /// Reads this host, for the server `cfg` describes.
    pub fn gather(cfg: &ServeConfig) -> Facts {
        let per_connection_bytes = 2 * cfg.min_grant;
        Facts {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            opcodes: uring::opcode_report(),
            io_uring_disabled: sysctl_one("kernel/io_uring_disabled"),
            driver: crate::server::pick_driver(cfg)
                .map(|(d, why)| (d.to_string(), why))
                .map_err(|e| format!("{e:#}")),
            nofile: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|s| parse_nofile(&s)),
            somaxconn: sysctl_one("net/core/somaxconn"),
            tcp_tw_reuse: sysctl_one("net/ipv4/tcp_tw_reuse"),
            ip_local_port_range: sysctl("net/ipv4/ip_local_port_range")
                .and_then(|v| Some((*v.first()?, *v.get(1)?))),
            tcp_rmem: sysctl_three("net/ipv4/tcp_rmem"),
            tcp_wmem: sysctl_three("net/ipv4/tcp_wmem"),
            tcp_mem: sysctl_three("net/ipv4/tcp_mem"),
            page_size: page_size(),
            per_connection_bytes,
        }
    }
}

/// Prints the report: one line per check, or one JSON object.
pub fn report(
    checks: &[Check],
    connections: u64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let warnings = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
        let doc = serde_json::json!({
            "connections": connections,
            "warnings": warnings,
            "checks": checks,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "weir check-system for {connections} connections")?;
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Ok => "OK  ",
            Verdict::Warn => "WARN",
        };
        write!(
            out,
            "{verdict} {}: {} (recommended: {})",
            c.name, c.found, c.recommended
        )?;
        if !c.set.is_empty() {
            write!(out, " set: {}", c.set)?;
        }
        if !c.note.is_empty() {
            write!(out, " -- {}", c.note)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host tuned as recommended, for 10,000 connections.
    fn tuned() -> Facts {
        Facts {
            kernel: Some("6.1.0-18-amd64".into()),
            opcodes: Ok(vec![OpcodeSupport {
                name: "ACCEPT",
                required: true,
                present: true,
            }]),
            io_uring_disabled: None,
            driver: Ok(("io_uring (multishot_accept=true)".into(), "auto".into())),
            nofile: Some((1024, 65536)),
            somaxconn: Some(4096),
            tcp_tw_reuse: Some(1),
            ip_local_port_range: Some((1024, 65535)),
            tcp_rmem: Some([4096, 131072, 6291456]),
            tcp_wmem: Some([4096, 16384, 4194304]),
            tcp_mem: Some([100_000, 200_000, 300_000]),
            page_size: 4096,
            per_connection_bytes: 64 * 1024,
        }
    }

    fn verdict(checks: &[Check], name: &str) -> Verdict {
        checks.iter().find(|c| c.name == name).unwrap().verdict
    }

    fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_tuned_host_is_all_ok() {
        let checks = evaluate(&tuned(), 10_000);
        for c in &checks {
            assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        }
        assert_eq!(checks.len(), 10);
    }

    #[test]
    fn a_stock_host_warns_with_the_command_to_fix() {
        let mut f = tuned();
        f.nofile = Some((1024, 4096));
        f.somaxconn = Some(128);
        f.tcp_tw_reuse = Some(2);
        f.ip_local_port_range = Some((32768, 60999));
        f.tcp_wmem = Some([4096, 16384, 1048576]);
        let checks = evaluate(&f, 50_000);
        let nofile = check(&checks, "RLIMIT_NOFILE");
        assert_eq!(nofile.verdict, Verdict::Warn);
        assert!(nofile.set.contains("LimitNOFILE=65536"), "{nofile:?}");
        assert!(nofile.set.contains("ulimit -n 65536"), "{nofile:?}");
        assert_eq!(
            check(&checks, "net.core.somaxconn").set,
            "sysctl -w net.core.somaxconn=4096"
        );
        assert_eq!(verdict(&checks, "net.core.somaxconn"), Verdict::Warn);
        assert_eq!(verdict(&checks, "net.ipv4.tcp_tw_reuse"), Verdict::Warn);
        // 28,232 ports for 50,000 connections.
        assert_eq!(
            verdict(&checks, "net.ipv4.ip_local_port_range"),
            Verdict::Warn
        );
        assert_eq!(verdict(&checks, "net.ipv4.tcp_wmem"), Verdict::Warn);
        assert_eq!(verdict(&checks, "net.ipv4.tcp_rmem"), Verdict::Ok);
    }

    #[test]
    fn nofile_counts_the_hard_limit_and_the_reserve() {
        let mut f = tuned();
        f.nofile = Some((1024, 65536));
        assert_eq!(verdict(&evaluate(&f, 64_512), "RLIMIT_NOFILE"), Verdict::Ok);
        assert_eq!(
            verdict(&evaluate(&f, 64_513), "RLIMIT_NOFILE"),
            Verdict::Warn
        );
        let checks = evaluate(&f, 200_000);
        assert!(check(&checks, "RLIMIT_NOFILE")
            .set
            .starts_with("LimitNOFILE=201024 "));
    }

    #[test]
    fn tcp_mem_is_judged_against_connections_times_the_estimate() {
        let f = tuned();
        // 10,000 x 64 KiB = 160,000 pages: under the pressure mark of 200,000.
        assert_eq!(
            verdict(&evaluate(&f, 10_000), "net.ipv4.tcp_mem"),
            Verdict::Ok
        );
        // 20,000 x 64 KiB = 320,000 pages: over it.
        let checks = evaluate(&f, 20_000);
        let mem = check(&checks, "net.ipv4.tcp_mem");
        assert_eq!(mem.verdict, Verdict::Warn);
        assert_eq!(
            mem.set,
            "sysctl -w net.ipv4.tcp_mem=\"100000 320000 480000\""
        );
        assert!(
            mem.recommended.starts_with("pressure >= 320000 pages"),
            "{mem:?}"
        );
    }

    #[test]
    fn io_uring_problems_are_warnings_with_a_reason() {
        let mut f = tuned();
        f.opcodes = Err("io_uring_setup failed: Operation not permitted".into());
        f.io_uring_disabled = Some(2);
        f.driver = Ok(("epoll".into(), "--driver auto: io_uring unavailable".into()));
        let checks = evaluate(&f, 100);
        let ring = check(&checks, "io_uring");
        assert_eq!(ring.verdict, Verdict::Warn);
        assert_eq!(ring.set, "sysctl -w kernel.io_uring_disabled=0");
        let driver = check(&checks, "driver");
        assert_eq!(driver.verdict, Verdict::Warn);
        assert!(driver.note.contains("unavailable"));

        let mut f = tuned();
        f.opcodes = Ok(vec![OpcodeSupport {
            name: "SENDMSG",
            required: true,
            present: false,
        }]);
        let ring = evaluate(&f, 100).remove(1);
        assert_eq!(ring.verdict, Verdict::Warn);
        assert!(ring.note.contains("missing SENDMSG"), "{ring:?}");
    }

    #[test]
    fn old_or_unreadable_values_warn() {
        let mut f = tuned();
        f.kernel = Some("5.4.0-150-generic".into());
        f.somaxconn = None;
        let checks = evaluate(&f, 100);
        assert_eq!(verdict(&checks, "kernel"), Verdict::Warn);
        assert_eq!(check(&checks, "net.core.somaxconn").found, "unreadable");
        assert_eq!(verdict(&checks, "net.core.somaxconn"), Verdict::Warn);
        f.kernel = Some("5.10.0-28-amd64".into());
        assert_eq!(verdict(&evaluate(&f, 100), "kernel"), Verdict::Ok);
    }

    #[test]
    fn proc_parsers() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63456                63456                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_nofile(limits), Some((1024, 524288)));
        assert_eq!(
            parse_nofile("Max open files unlimited unlimited files"),
            Some((u64::MAX, u64::MAX))
        );
        assert_eq!(parse_release("6.12.3+deb13-amd64"), (6, 12));
        assert_eq!(
            numbers("4096\t131072\t6291456\n"),
            Some(vec![4096, 131072, 6291456])
        );
        assert_eq!(numbers("32768 x"), None);
    }
}
