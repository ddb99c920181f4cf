//! End-to-end tests: the real `weir` binary, real clients (curl, axel, aria2c, unzip, weir-load,
//! raw sockets). One binary, a module per topic.
//!
//! What runs where:
//! - Every scenario that serves bytes is a `fn(Driver)` expanded by
//!   [`weir_tests::on_every_driver!`] into three tests, `MODULE::SCENARIO::uring` (io_uring with
//!   all the kernel offers), `::uring_minimal` (`--uring-features minimal`, the Linux 5.10 level)
//!   and `::epoll`; each server checks that its banner names the driver asked for. Filter with
//!   `cargo test -p weir-tests -- SCENARIO` or `-- ::uring_minimal`.
//! - Single tests: `robustness::io_uring_refused_falls_back_to_epoll` (tests `--driver auto`
//!   under a seccomp filter) and `loadgen::demo_runs_against_weir` (`weir-load demo` starts weir
//!   on its default driver), and `guest::linux_6_1_serves_on_every_driver` (boots Debian's
//!   Linux 6.1 under QEMU through virtme-ng and serves a curl range on all three levels there).
//! - Scenarios that measure rates or CPU time (`shaping::*`, `robustness::emfile`) hold
//!   [`weir_tests::exclusive`] and run alone; all others share the machine
//!   ([`weir_tests::DataDir::new`] takes the shared side of the gate).
//! - Every client the tests use must be installed (CI's `.ci/run` installs them); a missing one
//!   fails its tests with the package to install, never skips them.
//! - No test sleeps for readiness: each waits (bounded) for what it needs to see, through
//!   [`weir_tests::eventually`], the server's banner, the admin API's metrics, the journal
//!   (`weir cart list`) or the client's socket.

mod admin;
mod chaos;
mod clients;
mod completion;
mod crash;
mod deploy;
mod details;
mod empty_album;
mod enospc;
mod guest;
mod hostile;
mod http_status;
mod loadgen;
mod names;
mod nonreader;
mod operations;
mod reload;
mod robustness;
mod shaping;
mod tls;
