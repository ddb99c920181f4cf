//! weir: a controlled-download server.
//!
//! Every request is authorized (Basic auth or a signed link, and the item must be in the user's
//! cart), bandwidth is shaped per user across all of a user's connections, and an item leaves the
//! cart only when every byte of it was acknowledged by the client's TCP.
//!
//! Map of the crate:
//! - [`cli`]: the `weir` command line (thin; calls into the modules below).
//! - [`config`]: what `weir serve` runs with.
//! - [`storage`]: every table, query and migration, behind the [`storage::Storage`] trait
//!   (users, catalog, carts, history, the ledger's journal, the webhook outbox); SQLite today.
//! - [`intervals`]: the merged set of delivered byte intervals (shared by storage and completion).
//! - [`catalog`]: the immutable content store files are imported into.
//! - [`password`], [`token`]: argon2id hashes and HMAC-signed links.
//! - [`demo`]: the embedded default catalog `weir serve` creates on a fresh machine.
//! - [`http`]: request parsing, routing, ranges, conditionals, response heads (no I/O).
//! - [`server`]: workers, the connection state machine and its two drivers (io_uring, epoll).
//! - [`completion`]: delivered-bytes accounting, the album zip layout, the completion ledger
//!   and the webhook.
//! - [`admin`]: the admin listener (metrics, health, live downloads, live rates, drain).
//! - [`accesslog`]: the access log, one line per response, written off the I/O threads.
//!
//! # Unsafe surface
//! `unsafe` appears only where weir talks to the kernel, each block with a `// SAFETY:` note:
//! - `server::segment`: mapping a content-store file (the immutability contract is documented
//!   there: weir never reads mapped bytes itself, so a truncated file cannot SIGBUS it);
//! - `server::uring`: submitting io_uring SQEs whose buffers (connection msghdrs and iovecs,
//!   the provided-buffer pool, timespecs) outlive their completions (teardown waits for them),
//!   the provided-buffer ring's two mmaps, and adopting accepted descriptors;
//! - `server::epoll`: `epoll_create1`/`epoll_ctl`/`epoll_wait` and `sendmsg` of a planned send;
//! - `server::sys`: libc calls through the `syscall!` helper (each call site states why its
//!   pointers are valid) and the `unsafe fn sendmsg` whose iovecs the caller vouches for;
//! - `server::send`: the zeroed `msghdr` of a connection's planned send;
//! - `completion::tcp_info`: `getsockopt(TCP_INFO)` and `ioctl(SIOCOUTQ)` into local structs;
//! - `completion::inflight`: the shared mapping of a worker's in-flight file (created,
//!   preallocated with `posix_fallocate` and truncated by this process alone);
//! - `password`: one `mallopt` fixing glibc's mmap threshold (argon2's work memory goes back to
//!   the OS);
//! - tests only: `server::conn`'s unit tests read a planned send's iovecs.

pub mod accesslog;
pub mod admin;
pub mod catalog;
pub mod cli;
pub mod completion;
pub mod config;
pub mod demo;
pub mod http;
pub mod intervals;
pub mod password;
pub mod server;
pub mod storage;
pub mod token;
