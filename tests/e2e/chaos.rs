//! SIGKILL at random moments while download managers resume from the bytes they hold (issue
//! 14), at CI size: `weir-bench chaos` with 3 kill cycles, 2 users x 8 connections, a 4 MiB item
//! at 2 MiB/s per user so that downloads span the kills, repeat purchases. Every purchase
//! whose client held every byte completes exactly once, none completes without its bytes, and
//! each completion's webhook key arrives (redeliveries of a key are allowed: at least once).

use std::time::Duration;

use weir_bench::chaos::{run_chaos, Config};
use weir_tests::{bin, on_every_driver, DataDir, Driver};

fn kills_lose_no_completion(driver: Driver) {
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
    let c = &o.counts;
    let detail = format!(
        "seed {seed}: {c:#?}\nkills {:?}\npurchases {:#?}",
        o.kills, o.purchases
    );
    assert_eq!(o.kills.len(), 3, "{detail}");
    assert!(o.ledger_idle, "the ledger settled: {detail}");
    assert!(c.client_completed >= 2, "downloads finished: {detail}");
    assert_eq!(c.client_hash_mismatch, 0, "{detail}");
    assert_eq!(c.lost, 0, "LOST: {detail}");
    assert_eq!(c.duplicated, 0, "DUPLICATED: {detail}");
    assert_eq!(c.false_, 0, "FALSE: {detail}");
    assert_eq!(c.completions_recorded, c.client_completed, "{detail}");
    assert_eq!(c.webhook_missing, 0, "{detail}");
    assert_eq!(c.webhook_duplicate_keys, 0, "{detail}");
    assert_eq!(c.webhook_orphans, 0, "{detail}");
    assert_eq!(c.webhook_distinct_keys, c.completions_recorded, "{detail}");
}

on_every_driver!(kills_lose_no_completion);
