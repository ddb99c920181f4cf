//! Many threads, one user: the aggregate stays within the cap plus the documented error.
//!
//! The clock is fake and advanced by the test alone, one 100 µs step at a time: at each step
//! every thread makes one round of requests at that instant, all at once (so they contend for
//! the user's shared bucket), and the clock moves on only when every thread has finished its
//! round. Simulated time therefore never depends on how fast the machine is.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use weir_shaper::{
    Clock, CoreShaper, FakeClock, Grant, Nanos, Rate, Shaper, ShaperConfig, UserLimits,
};

#[test]
fn threads_sharing_one_user_stay_within_the_cap() {
    // Backlogged all along, so the user gets nearly its rate.
    run(false, 0.97);
}

/// Connections closing and reopening (one per 20 ms per thread) must never push the user
/// over its cap. KNOWN ISSUE: such churn currently costs about 20% of the user's rate
/// (deficits of closed connections and fresh connections joining the back of the ring);
/// the floor below records today's behaviour, not the goal.
#[test]
fn threads_with_connection_churn_stay_within_the_cap() {
    run(true, 0.78);
}

fn run(churn: bool, min_share: f64) {
    const THREADS: usize = 4;
    const CONNS: usize = 10;
    const END: u64 = 2_000_000_000; // 2 s of simulated time
    const STEP: Duration = Duration::from_micros(100);
    let rate: u64 = 1 << 20;
    let clock = Arc::new(FakeClock::new());
    let shaper = Shaper::with_clock(ShaperConfig::default(), clock.clone());
    let limits = UserLimits::new(Rate::BytesPerSec(rate));
    let user = shaper.user("shared", limits);
    // The test and every worker meet here twice per step: once the clock is set, and once
    // every round at that time is done.
    let step = Arc::new(Barrier::new(THREADS + 1));

    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let (shaper, clock, user, step) =
                (shaper.clone(), clock.clone(), user.clone(), step.clone());
            thread::spawn(move || {
                let mut core = CoreShaper::new(shaper);
                let mut keys: Vec<_> = (0..CONNS).map(|_| core.open(&user)).collect();
                let mut next = [0u64; CONNS];
                let mut granted = 0u64;
                let mut round = 0u64;
                let mut next_churn = 20_000_000 + w as u64 * 5_000_000;
                loop {
                    step.wait();
                    let now = clock.now().0;
                    if now >= END {
                        break;
                    }
                    round += 1;
                    for c in 0..CONNS {
                        if next[c] > now {
                            continue;
                        }
                        match core.request(keys[c], 64 * 1024, Nanos(now)) {
                            Grant::Send(n) => {
                                // Every 7th grant is a short write: half comes back.
                                if round % 7 == 3 && n > 1 {
                                    core.refund(keys[c], n / 2);
                                    granted += n - n / 2;
                                } else {
                                    granted += n;
                                }
                            }
                            Grant::Wait(t) => {
                                assert!(t.0 > now);
                                next[c] = t.0;
                            }
                        }
                    }
                    // Connections come and go (one every 20 ms of simulated time per
                    // thread), so deficits and leases are returned and re-leased.
                    if churn && now >= next_churn {
                        next_churn = now + 20_000_000;
                        let c = (now / 20_000_000) as usize % CONNS;
                        core.close(keys[c]);
                        keys[c] = core.open(&user);
                        next[c] = 0;
                    }
                    step.wait();
                }
                granted
            })
        })
        .collect();

    // The driver: 100 µs of simulated time per step, once every worker is done with the last.
    loop {
        step.wait();
        if clock.now().0 >= END {
            break;
        }
        step.wait();
        clock.advance(STEP);
    }
    let total: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    let bound = shaper.error_bound_bytes(limits).unwrap();
    let cap = rate * END / 1_000_000_000 + bound;
    eprintln!("granted {total}, cap {cap} (error bound {bound})");
    assert!(total <= cap, "granted {total} > cap {cap}");
    let floor = min_share * (rate * END / 1_000_000_000) as f64;
    assert!(total as f64 >= floor, "granted {total} < {floor}");
}
