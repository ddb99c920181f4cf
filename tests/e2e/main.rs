//! End-to-end tests: the real `weir` binary, real clients (curl, axel, aria2c, raw sockets).
//! One binary, a module per topic; each scenario runs once per driver / io_uring feature level.

mod admin;
mod clients;
mod completion;
mod http_status;
mod loadgen;
mod robustness;
mod shaping;
