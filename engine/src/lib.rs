//! weir: a controlled-download server.
//!
//! Every request is authorized (Basic auth or a signed link, and the item must be in the user's
//! cart), bandwidth is shaped per user across all of a user's connections, and an item leaves the
//! cart only when every byte of it was acknowledged by the client's TCP.
//!
//! Map of the crate:
//! - [`cli`]: the `weir` command line (thin; calls into the modules below).
//! - [`config`]: what `weir serve` runs with.
//! - [`store`]: SQLite: users, catalog, carts, history.
//! - [`catalog`]: the immutable content store files are imported into.
//! - [`password`], [`token`]: argon2id hashes and HMAC-signed links.
//! - [`demo`]: the embedded default catalog `weir serve` creates on a fresh machine.
//! - [`http`]: request parsing, routing, ranges, conditionals, response heads (no I/O).
//! - [`server`]: workers, the connection state machine and its two drivers (io_uring, epoll).
//! - [`admin`]: the admin listener (metrics, live rates, drain).

pub mod admin;
pub mod catalog;
pub mod cli;
pub mod completion;
pub mod config;
pub mod demo;
pub mod http;
pub mod password;
pub mod server;
pub mod store;
pub mod token;
