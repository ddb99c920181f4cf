//! End-to-end tests of weir-load against real servers the tests start themselves: nginx (skipped
//! with a message when it is not installed), a deliberately flaky in-test server, and weir's
//! `demo` contract. Runs are driven in-process through `weir_load::run`.

mod cli;
mod common;
mod demo;
mod flaky;
mod nginx;
