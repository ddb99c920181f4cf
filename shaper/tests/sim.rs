//! Deterministic allocations under simulated time.

mod common;

use common::*;
use weir_shaper::{Rate, ShaperConfig, UserLimits};

fn limits(bps: u64) -> UserLimits {
    UserLimits::new(Rate::BytesPerSec(bps))
}

#[test]
fn forty_connections_share_one_user_exactly() {
    // 40 conns × 4096 B per 10 ms epoch = 16,384,000 B/s.
    let mut sim = Sim::new(ShaperConfig::default(), 1);
    let u = sim.shaper.user("alice", limits(16_384_000));
    let u = sim.add_user(u);
    let conns: Vec<usize> = (0..40).map(|_| sim.add_conn(u, 0, 0, u64::MAX)).collect();
    sim.run_until(1000 * MS);
    for e in 10..100 {
        let per: Vec<u64> = conns
            .iter()
            .map(|&c| sim.bytes(c, e * 10 * MS, (e + 1) * 10 * MS))
            .collect();
        assert!(per.iter().all(|&b| b == 4096), "epoch {e}: {per:?}");
    }
    let total = sim.user_bytes(u, 100 * MS, 1000 * MS);
    assert_eq!(total, 16_384_000 * 9 / 10);
}

#[test]
fn forty_connections_on_two_cores_jain() {
    let mut sim = Sim::new(ShaperConfig::default(), 2);
    let u = sim.shaper.user("bob", limits(2 << 20));
    let u = sim.add_user(u);
    // 30 on core 0, 10 on core 1.
    let conns: Vec<usize> = (0..40)
        .map(|i| sim.add_conn(u, usize::from(i >= 30), 0, u64::MAX))
        .collect();
    sim.run_until(3000 * MS);
    let per: Vec<f64> = conns
        .iter()
        .map(|&c| sim.bytes(c, 1000 * MS, 2000 * MS) as f64)
        .collect();
    let j = jain(&per);
    let total = sim.user_bytes(u, 1000 * MS, 3000 * MS) as f64 / 2.0;
    eprintln!("jain {j:.4} total {total} per {per:?}");
    assert!(j >= 0.99, "jain {j}");
    assert!(
        (total / f64::from(2 << 20) - 1.0).abs() < 0.01,
        "total {total}"
    );
}

#[test]
#[ignore]
fn debug_trace() {
    let mut sim = Sim::new(ShaperConfig::default(), 2);
    let u = sim.shaper.user("bob", limits(2 << 20));
    let u = sim.add_user(u);
    let _conns: Vec<usize> = (0..40)
        .map(|i| sim.add_conn(u, usize::from(i >= 30), 0, u64::MAX))
        .collect();
    sim.run_until(1000 * MS);
    for e in 0..60 {
        let b = sim.user_bytes(u, e * 10 * MS, (e + 1) * 10 * MS);
        let w: u64 = sim.conns.iter().map(|c| c.waits).sum();
        eprintln!("epoch {e}: {b} waits {w}");
    }
}
