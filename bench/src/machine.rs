//! The facts a result is only meaningful with: versions of everything measured and the machine.
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::util::command_output;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub nproc: usize,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub virtualization: String,
    pub tcp_mem_pages: String,
    pub tcp_wmem: String,
    pub tcp_rmem: String,
    pub somaxconn: String,
    pub io_uring_disabled: String,
    pub nofile_soft_after_raise: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub weir_git_rev: String,
    pub weir_git_dirty: bool,
    pub weir_version: String,
    pub weir_bin: String,
    pub nginx: String,
    pub rustc: String,
    pub axel: String,
    pub wrk: String,
    pub curl: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "(unavailable)".to_owned())
}

impl Machine {
    pub fn collect(nofile: u64) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            hostname: read("/proc/sys/kernel/hostname"),
            cpu_model,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_kib,
            kernel: format!(
                "{} {}",
                read("/proc/sys/kernel/osrelease"),
                command_output("uname", &["-m"])
            ),
            virtualization: command_output("systemd-detect-virt", &[]),
            tcp_mem_pages: read("/proc/sys/net/ipv4/tcp_mem"),
            tcp_wmem: read("/proc/sys/net/ipv4/tcp_wmem"),
            tcp_rmem: read("/proc/sys/net/ipv4/tcp_rmem"),
            somaxconn: read("/proc/sys/net/core/somaxconn"),
            io_uring_disabled: read("/proc/sys/kernel/io_uring_disabled"),
            nofile_soft_after_raise: nofile,
        }
    }
}

impl Versions {
    pub fn collect(workspace: &Path, weir_bin: &Path) -> Versions {
        let ws = workspace.to_string_lossy().into_owned();
        let git = |args: &[&str]| {
            let mut a = vec!["-C", ws.as_str()];
            a.extend_from_slice(args);
            command_output("git", &a)
        };
        let first_line = |s: String| s.lines().next().unwrap_or("").to_owned();
        Versions {
            weir_git_rev: git(&["rev-parse", "HEAD"]),
            weir_git_dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
            weir_version: command_output(&weir_bin.to_string_lossy(), &["--version"]),
            weir_bin: weir_bin.display().to_string(),
            nginx: command_output("nginx", &["-v"]),
            rustc: command_output("rustc", &["-V"]),
            axel: first_line(command_output("axel", &["-V"])),
            wrk: first_line(command_output("wrk", &["-v"])),
            // `curl -V`'s first line lists every linked library; name and version suffice.
            curl: first_line(command_output("curl", &["-V"]))
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}
