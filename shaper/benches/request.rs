//! Cost of one `CoreShaper::request` on the hot path, at 40, 8,000 and 10,000 connections on
//! one core (the target: < 100 ns per grant at 10,000). The allocator's pass over the
//! users runs inside `request` when a period ends, so its cost is spread over the requests.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use weir_shaper::{
    ConnKey, CoreShaper, FakeClock, Grant, Nanos, Rate, Shaper, ShaperConfig, UserLimits,
};

/// Simulated time advances 1 µs per request, so allocation epochs, leases and waits all occur.
fn setup(users: usize, per_user: usize, rate: Rate, global: Rate) -> (CoreShaper, Vec<ConnKey>) {
    let clock = Arc::new(FakeClock::new());
    let cfg = ShaperConfig {
        global,
        ..ShaperConfig::default()
    };
    let shaper = Shaper::with_clock(cfg, clock);
    let mut core = CoreShaper::new(shaper.clone());
    let mut keys = Vec::new();
    for u in 0..users {
        let h = shaper.user(&format!("user{u}"), UserLimits::new(rate));
        for _ in 0..per_user {
            keys.push(core.open(&h));
        }
    }
    (core, keys)
}

fn drive(c: &mut Criterion, name: &str, users: usize, per_user: usize, rate: Rate, global: Rate) {
    let (mut core, keys) = setup(users, per_user, rate, global);
    let mut now = 0u64;
    let mut i = 0usize;
    // What the benchmark exercises: the share of requests that end in a grant.
    let (mut sends, mut bytes) = (0u64, 0u64);
    for _ in 0..200_000 {
        now += 1_000;
        i = (i + 1) % keys.len();
        if let Grant::Send(n) = core.request(keys[i], 64 * 1024, Nanos(now)) {
            sends += 1;
            bytes += n;
        }
    }
    eprintln!(
        "{name}: {} connections, {:.1}% of requests granted, {:.0} B/s granted in simulated time",
        keys.len(),
        sends as f64 / 2000.0,
        bytes as f64 / (200_000.0 * 1e-6)
    );
    c.bench_function(name, |b| {
        b.iter(|| {
            now += 1_000;
            i += 1;
            if i == keys.len() {
                i = 0;
            }
            let g = core.request(keys[i], black_box(64 * 1024), Nanos(now));
            if let Grant::Send(n) = g {
                black_box(n);
            }
            g
        })
    });
}

fn benches(c: &mut Criterion) {
    let mib = |n: u64| Rate::BytesPerSec(n << 20);
    drive(c, "request/1user_x40_2MiB", 1, 40, mib(2), Rate::Unlimited);
    drive(
        c,
        "request/200users_x40_256KiB",
        200,
        40,
        Rate::BytesPerSec(256 << 10),
        Rate::Unlimited,
    );
    drive(
        c,
        "request/200users_x40_global25MiB",
        200,
        40,
        Rate::BytesPerSec(256 << 10),
        mib(25),
    );
    // 250 users × 40 = 10,000 connections, each user short of tokens (most requests wait)...
    drive(
        c,
        "request/250users_x40_256KiB",
        250,
        40,
        Rate::BytesPerSec(256 << 10),
        Rate::Unlimited,
    );
    // ...and never short: every request is a grant.
    drive(
        c,
        "request/grant_path_250users_x40_1TiB",
        250,
        40,
        mib(1 << 20),
        Rate::Unlimited,
    );
    // Shaped but never short of tokens: every request takes the grant path.
    drive(
        c,
        "request/grant_path_1user_x40_1TiB",
        1,
        40,
        mib(1 << 20),
        Rate::Unlimited,
    );
    drive(
        c,
        "request/unlimited_fast_path",
        1,
        40,
        Rate::Unlimited,
        Rate::Unlimited,
    );
}

criterion_group! {
    name = shaper;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(shaper);
