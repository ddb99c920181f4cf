//! End-to-end tests of weir-load against real servers the tests start themselves: nginx (a
//! test that needs it fails, saying how to install it, when it is missing: CI installs it), a
//! deliberately flaky in-test server, and weir's `demo` contract. Runs are driven in-process
//! through `weir_load::run`.

mod cli;
mod common;
mod demo;
mod flaky;
mod hlog;
mod nginx;
mod restart;
mod tls;
