//! Deterministic allocations under simulated time.

mod common;

use common::*;
use std::time::Duration;
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
fn forty_connections_and_one_connection_split_the_root_equally() {
    let cfg = ShaperConfig {
        global: Rate::BytesPerSec(4 << 20),
        ..ShaperConfig::default()
    };
    let mut sim = Sim::new(cfg, 2);
    let many = sim.shaper.user("many", UserLimits::unlimited());
    let one = sim.shaper.user("one", UserLimits::unlimited());
    let (many, one) = (sim.add_user(many), sim.add_user(one));
    for i in 0..40 {
        sim.add_conn(many, i % 2, 0, u64::MAX);
    }
    sim.add_conn(one, 1, 0, u64::MAX);
    sim.run_until(3000 * MS);
    let a = sim.user_bytes(many, 1000 * MS, 3000 * MS) as f64;
    let b = sim.user_bytes(one, 1000 * MS, 3000 * MS) as f64;
    let ratio = a / b;
    assert!((0.98..1.02).contains(&ratio), "ratio {ratio}");
    assert!(((a + b) / 2.0 / f64::from(4 << 20) - 1.0).abs() < 0.01);
}

/// The accuracy scenario in simulation: 200 users × 40 connections on 2 cores,
/// users capped at 256 KiB/s, (a) no global cap, (b) a binding 25 MiB/s global cap.
/// The benchmark's load: 200 users × 40 connections at 256 KiB/s over two cores, run until
/// `to_ms`; each user's delivered / expected over [`from_ms`, `to_ms`), sorted.
fn benchmark_load(sim: &mut Sim, global: Option<u64>, from_ms: u64, to_ms: u64) -> Vec<f64> {
    for u in 0..200 {
        let h = sim.shaper.user(&format!("u{u}"), limits(256 << 10));
        let u = sim.add_user(h);
        for c in 0..40 {
            sim.add_conn(u, c % 2, 0, u64::MAX);
        }
    }
    sim.run_until(to_ms * MS);
    let expect = match global {
        None => 256.0 * 1024.0,
        Some(g) => g as f64 / 200.0,
    };
    let secs = (to_ms - from_ms) as f64 / 1000.0;
    let mut ratios: Vec<f64> = (0..200)
        .map(|u| sim.user_bytes(u, from_ms * MS, to_ms * MS) as f64 / secs / expect)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// Driven both ways: tagged connections woken through `ready` (weir's engine) and untagged
/// ones that only follow their `Grant::Wait` times.
#[test]
fn two_hundred_users_of_forty_connections() {
    for (global, untagged) in [
        (None, false),
        (Some(25u64 << 20), false),
        (None, true),
        (Some(25u64 << 20), true),
    ] {
        let cfg = ShaperConfig {
            global: global.map_or(Rate::Unlimited, Rate::BytesPerSec),
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, 2);
        sim.untagged = untagged;
        let ratios = benchmark_load(&mut sim, global, 1000, 4000);
        let j = jain(&ratios);
        eprintln!(
            "global {global:?} untagged {untagged}: p1 {:.4} p50 {:.4} p99 {:.4} jain {j:.5}",
            ratios[1], ratios[100], ratios[197]
        );
        assert!(ratios[1] >= 0.97 && ratios[197] <= 1.03, "{ratios:?}");
        assert!(j >= 0.99);
    }
}

/// An engine's timers fire late when its loop is busy. With no slack every bucket holds one
/// period, so credit a late connection would have used is lost; `late_slack` keeps it.
#[test]
fn late_wakeups_lose_nothing_with_slack() {
    let run = |slack: Duration| {
        let cfg = ShaperConfig {
            late_slack: slack,
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, 2);
        sim.late_max = 3 * MS;
        let users: Vec<usize> = (0..20)
            .map(|i| {
                let h = sim.shaper.user(&format!("u{i}"), limits(256 * 1024));
                sim.add_user(h)
            })
            .collect();
        for &u in &users {
            for c in 0..40 {
                sim.add_conn(u, c % 2, 0, u64::MAX);
            }
        }
        sim.run_until(6000 * MS);
        let ratios: Vec<f64> = users
            .iter()
            .map(|&u| sim.user_bytes(u, 1000 * MS, 6000 * MS) as f64 / (5.0 * 256.0 * 1024.0))
            .collect();
        eprintln!(
            "slack {slack:?} min {:?}",
            ratios.iter().cloned().fold(f64::MAX, f64::min)
        );
        ratios.iter().sum::<f64>() / ratios.len() as f64
    };
    let without = run(Duration::ZERO);
    let with = run(Duration::from_millis(50));
    assert!(
        without < 0.995,
        "lateness should cost something without slack: {without}"
    );
    assert!((0.998..=1.002).contains(&with), "with 50 ms slack: {with}");
}

/// Regression: connections that arrive one by one after an idle stretch, on several cores.
/// The first connections' chunks were once sized from the whole bucket the allocator handed
/// out after the idle time; partly filled chunks on every core then used up the user's
/// held-token cap and the user never sent again.
#[test]
fn staggered_arrivals_after_idle_never_starve_a_user() {
    for cores in [2usize, 4, 8] {
        let cfg = ShaperConfig {
            late_slack: Duration::from_millis(50),
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, cores);
        sim.late_max = 3 * MS;
        sim.send_delay = 150_000;
        let users: Vec<usize> = (0..20)
            .map(|i| {
                let h = sim.shaper.user(&format!("u{i}"), limits(256 * 1024));
                sim.add_user(h)
            })
            .collect();
        for c in 0..40u64 {
            for (i, &u) in users.iter().enumerate() {
                let at = 200 * MS + c * 50 * MS + i as u64 * MS;
                sim.run_until(at);
                sim.add_conn(u, (i + c as usize) % cores, at, u64::MAX);
            }
        }
        sim.run_until(8000 * MS);
        for &u in &users {
            let ratio = sim.user_bytes(u, 3000 * MS, 8000 * MS) as f64 / (5.0 * 256.0 * 1024.0);
            assert!(
                (0.98..=1.02).contains(&ratio),
                "{cores} cores, user {u}: {ratio}"
            );
        }
    }
}

/// A connection whose client stopped reading hands its grants back: the user's other
/// connection gets the whole rate, and nothing piles up with the stalled one.
#[test]
fn given_back_grants_go_to_the_other_connections() {
    use std::sync::Arc;
    use weir_shaper::{CoreShaper, FakeClock, Grant, Nanos, Shaper};
    let clock = Arc::new(FakeClock::new());
    let shaper = Shaper::with_clock(ShaperConfig::default(), clock.clone());
    let mut core = CoreShaper::new(shaper.clone());
    let user = shaper.user("u", limits(409_600)); // 4 KiB per 10 ms period
    let stalled = core.open(&user);
    let live = core.open(&user);
    let (mut sent, mut wake) = (0u64, [Nanos(0); 2]);
    for period in 0..200u64 {
        if period == 100 {
            sent = 0;
        }
        let now = Nanos(clock.now_nanos());
        for (i, key) in [stalled, live].into_iter().enumerate() {
            while wake[i] <= now {
                match core.request(key, 1 << 20, now) {
                    Grant::Send(n) if i == 0 => {
                        core.give_back(key, n);
                        wake[i] = Nanos(now.0 + 50 * MS);
                    }
                    Grant::Send(n) => sent += n,
                    Grant::Wait(t) => wake[i] = t,
                }
            }
        }
        clock.advance(Duration::from_millis(10));
    }
    let ratio = sent as f64 / (100.0 * 4096.0);
    assert!(ratio >= 0.95, "the live connection got {ratio} of the rate");
}

/// The engine's settings on the benchmark's load (8,000 connections of 6.5 KB/s, 16 KiB
/// chunks): a waiting connection is woken when its chunk fills, about once per grant, instead
/// of every time a guessed wait runs out (that was ~6 wake-ups per grant with 0.5 s waits).
#[test]
fn slow_connections_wake_about_once_per_grant() {
    for global in [None, Some(25u64 << 20)] {
        let cfg = ShaperConfig {
            global: global.map_or(Rate::Unlimited, Rate::BytesPerSec),
            min_grant_bytes: 16 * 1024,
            late_slack: Duration::from_millis(50),
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, 2);
        sim.late_max = 3 * MS;
        let ratios = benchmark_load(&mut sim, global, 2000, 12_000);
        let grants: usize = sim.conns.iter().map(|c| c.grants.len()).sum();
        let (timer, ready) = sim.wakeups;
        let per_grant = (timer + ready) as f64 / grants as f64;
        eprintln!(
            "global {global:?}: p1 {:.4} p99 {:.4}, {grants} grants, wake-ups: {timer} timer, {ready} ready ({per_grant:.2} per grant)",
            ratios[1], ratios[197]
        );
        assert!(ratios[1] >= 0.97 && ratios[197] <= 1.03, "{ratios:?}");
        assert!(per_grant <= 1.2, "{per_grant:.2} wake-ups per grant");
    }
}

/// A live limit change reaches waiting (tagged) connections within a period or two, although
/// their safety-net timers are seconds away: raised rates fill their chunks sooner, and a user
/// made unlimited releases every waiting connection at once.
#[test]
fn limit_changes_reach_waiting_connections_at_once() {
    for new in [UserLimits::unlimited(), limits(64 << 20)] {
        let cfg = ShaperConfig {
            min_grant_bytes: 16 * 1024,
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, 2);
        // Once the limit is raised most requests are granted: a send takes time.
        sim.send_delay = MS;
        let h = sim.shaper.user("slow", limits(64 << 10));
        let u = sim.add_user(h);
        // 40 connections of 1.6 KB/s: each chunk takes ~10 s to fill.
        let conns: Vec<usize> = (0..40)
            .map(|c| sim.add_conn(u, c % 2, 0, u64::MAX))
            .collect();
        sim.run_until(2000 * MS);
        sim.shaper.set_user_limits("slow", new);
        sim.run_until(2030 * MS);
        let late: Vec<usize> = conns
            .iter()
            .copied()
            .filter(|&c| sim.bytes(c, 2000 * MS, 2030 * MS) == 0)
            .collect();
        assert!(
            late.is_empty(),
            "{new:?}: no grant within 30 ms of the change: {late:?}"
        );
    }
}
