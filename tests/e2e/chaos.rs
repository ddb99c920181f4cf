//! SIGKILL at random moments while download managers resume from the bytes they hold (issue
//! 14), at CI size: `weir-bench chaos` with 3 kill cycles, 2 users x 8 connections, a 4 MiB item
//! at 2 MiB/s per user so that downloads span the kills, repeat purchases.
//!
//! Two properties, tested apart because one is met and one is not yet:
//! - the hard rules, on every driver: no purchase completes without its client holding every
//!   byte (FALSE), none completes twice (DUPLICATED), and each completion's webhook key arrives
//!   exactly once;
//! - no lost completion (LOST: the client held every byte, weir recorded nothing): still open.
//!   weir now credits what the kernel's orphaned sockets saw acknowledged after the kill, but a
//!   SIGKILL that arrives while a worker is inside `io_uring_enter` takes effect when the call
//!   returns, after the kernel took that batch's sends and before the worker recorded them; a
//!   client that completed its range with those bytes never asks again. 1 to 7 purchases in
//!   about 50 are lost in the full run (`results/2026-12-03-chaos/`). That test is ignored, with
//!   the reason, until the record is written in the kernel's own order.

use std::time::Duration;

use weir_bench::chaos::{run_chaos, Config, Counts, Outcome};
use weir_tests::{bin, on_every_driver, DataDir, Driver};

/// One CI-sized chaos run on `driver`; the outcome and a description for assertion messages.
fn chaos(driver: Driver) -> (Outcome, String) {
    let dir = DataDir::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let cfg = Config {
        weir: bin("weir"),
        weir_load: bin("weir-load"),
        cycles: 3,
        users: 2,
        connections: 8,
        file_bytes: 4 << 20,
        rate: "2MiB".into(),
        duration: Duration::from_secs(16),
        seed,
        completion_timeout: Duration::from_secs(5),
        work: dir.path().join("work"),
        raw: dir.path().join("raw"),
        extra_args: driver.args().iter().map(|s| s.to_string()).collect(),
    };
    let o = run_chaos(&cfg).expect("the chaos run");
    driver.check_listen_line(&o.listen_line);
    let detail = format!(
        "seed {seed}: {:#?}\nkills {:?}\npurchases {:#?}",
        o.counts, o.kills, o.purchases
    );
    assert_eq!(o.kills.len(), 3, "{detail}");
    assert!(o.ledger_idle, "the ledger settled: {detail}");
    assert!(
        o.counts.client_completed >= 2,
        "downloads finished: {detail}"
    );
    assert_eq!(o.counts.client_hash_mismatch, 0, "{detail}");
    (o, detail)
}

fn kills_never_complete_falsely_or_twice(driver: Driver) {
    let (o, detail) = chaos(driver);
    let c: &Counts = &o.counts;
    eprintln!(
        "chaos {driver:?}: lost {} of {}",
        c.lost, c.client_completed
    );
    assert_eq!(c.false_, 0, "FALSE: {detail}");
    assert_eq!(c.duplicated, 0, "DUPLICATED: {detail}");
    assert_eq!(c.webhook_missing, 0, "{detail}");
    assert_eq!(c.webhook_duplicate_keys, 0, "{detail}");
    assert_eq!(c.webhook_orphans, 0, "{detail}");
    assert_eq!(c.webhook_distinct_keys, c.completions_recorded, "{detail}");
}

on_every_driver!(kills_never_complete_falsely_or_twice);

#[test]
#[ignore = "issue 14 open: sends the kernel executed in the io_uring_enter during which SIGKILL \
            arrived are never recorded; 1 to 7 purchases in ~50 lost (results/2026-12-03-chaos/)"]
fn kills_lose_no_completion() {
    let (o, detail) = chaos(Driver::Uring);
    assert_eq!(o.counts.lost, 0, "LOST: {detail}");
    assert_eq!(
        o.counts.completions_recorded, o.counts.client_completed,
        "{detail}"
    );
}
