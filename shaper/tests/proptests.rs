//! Property tests of the shaping invariants and of rate parsing.

mod common;

use common::*;
use proptest::prelude::*;
use weir_shaper::{Rate, ShaperConfig, UserLimits};

const P: u64 = 10 * MS;

fn unit_strategy() -> impl Strategy<Value = (&'static str, f64)> {
    prop::sample::select(vec![
        ("B", 1.0),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
        ("kbit", 125.0),
        ("Mbit", 125_000.0),
        ("Gbit", 125_000_000.0),
    ])
}

proptest! {
    #[test]
    fn rate_parses_every_unit(n in 1u64..1_000_000, (unit, mult) in unit_strategy()) {
        let expect = (n as f64 * mult).round() as u64;
        let got: Rate = format!("{n}{unit}").parse().unwrap();
        prop_assert_eq!(got, Rate::BytesPerSec(expect));
        let spaced: Rate = format!(" {n} {unit} ").parse().unwrap();
        prop_assert_eq!(spaced, got);
    }

    #[test]
    fn rate_display_round_trips(b in 1u64..u64::MAX / 2) {
        let r = Rate::BytesPerSec(b);
        prop_assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
    }

    #[test]
    fn rate_parse_never_panics(s in "\\PC{0,12}") {
        let _ = s.parse::<Rate>();
    }
}

#[derive(Debug, Clone)]
struct UserSpec {
    rate: u64,
    ceil_extra: u64,
    burst: u64,
    weight: u32,
    conns: usize,
    start_ms: u64,
    stop_ms: u64,
}

fn user_spec() -> impl Strategy<Value = UserSpec> {
    (
        64u64 << 10..4 << 20,
        prop::option::of(0u64..2 << 20),
        0u64..64 << 10,
        1u32..4,
        1usize..12,
        0u64..300,
        300u64..900,
    )
        .prop_map(
            |(rate, extra, burst, weight, conns, start_ms, stop_ms)| UserSpec {
                rate,
                ceil_extra: extra.unwrap_or(0),
                burst,
                weight,
                conns,
                start_ms,
                stop_ms,
            },
        )
}

fn limits(s: &UserSpec) -> UserLimits {
    UserLimits {
        rate: Rate::BytesPerSec(s.rate),
        ceil: Rate::BytesPerSec(s.rate + s.ceil_extra),
        burst_bytes: s.burst,
        weight: s.weight,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No user exceeds `ceil × W + error_bound_bytes`, nor the root `global × W + its bound`,
    /// over windows of one period and longer.
    #[test]
    fn no_class_exceeds_its_ceil_nor_the_root_its_rate(
        users in prop::collection::vec(user_spec(), 1..5),
        global in prop::option::of(256u64 << 10..8 << 20),
        cores in 1usize..3,
        slack_ms in prop::option::of(1u64..100),
        late_ms in 0u64..5,
    ) {
        let slack = std::time::Duration::from_millis(slack_ms.unwrap_or(0));
        let cfg = ShaperConfig {
            global: global.map_or(Rate::Unlimited, Rate::BytesPerSec),
            late_slack: slack,
            ..ShaperConfig::default()
        };
        let mut sim = Sim::new(cfg, cores);
        sim.late_max = late_ms * MS;
        for (i, spec) in users.iter().enumerate() {
            let h = sim.shaper.user(&format!("u{i}"), limits(spec));
            let u = sim.add_user(h);
            for c in 0..spec.conns {
                let id = sim.add_conn(u, c % cores, spec.start_ms * MS, spec.stop_ms * MS);
                sim.conns[id].close_at_end = c % 2 == 0;
            }
        }
        sim.run_until(1000 * MS);
        let mut root_bound = 0u64;
        for (i, spec) in users.iter().enumerate() {
            let bound = sim.shaper.error_bound_bytes(limits(spec)).unwrap();
            root_bound += bound;
            let ceil = match global {
                Some(g) => (spec.rate + spec.ceil_extra).min(g),
                None => spec.rate + spec.ceil_extra,
            };
            let grants = sim.user_grants(i);
            for w in [P, 5 * P, 20 * P, 50 * P] {
                let max = max_window(&grants, w);
                let allowed = ceil * w / 1_000_000_000 + bound;
                prop_assert!(max <= allowed, "user {i} window {w}: {max} > {allowed}");
            }
        }
        if let Some(g) = global {
            let mut all: Vec<(u64, u64)> = (0..users.len()).flat_map(|u| sim.user_grants(u)).collect();
            all.sort_unstable();
            // Two periods of the root, plus its slack, plus every user's bound.
            let root = g.max(1) / 100 * 2 + g * slack_ms.unwrap_or(0) / 1000 + root_bound;
            for w in [P, 5 * P, 20 * P, 50 * P] {
                let max = max_window(&all, w);
                let allowed = g * w / 1_000_000_000 + root;
                prop_assert!(max <= allowed, "root window {w}: {max} > {allowed}");
            }
        }
    }

    /// Backlogged users under a binding root get shares proportional to their weights,
    /// whatever their connection counts and cores.
    #[test]
    fn backlogged_users_share_the_root_by_weight(
        specs in prop::collection::vec((1u32..4, 1usize..41), 2..5),
        global_kib in 512u64..8192,
    ) {
        let g = global_kib << 10;
        let cfg = ShaperConfig { global: Rate::BytesPerSec(g), ..ShaperConfig::default() };
        let mut sim = Sim::new(cfg, 2);
        for (i, &(weight, conns)) in specs.iter().enumerate() {
            let lim = UserLimits { weight, ..UserLimits::unlimited() };
            let h = sim.shaper.user(&format!("u{i}"), lim);
            let u = sim.add_user(h);
            for c in 0..conns {
                sim.add_conn(u, c % 2, 0, u64::MAX);
            }
        }
        sim.run_until(2200 * MS);
        let total_w: u32 = specs.iter().map(|s| s.0).sum();
        let total: u64 = (0..specs.len()).map(|u| sim.user_bytes(u, 200 * MS, 2200 * MS)).sum();
        let expect_total = 2 * g;
        prop_assert!(total as f64 >= expect_total as f64 * 0.98, "root underused: {total} of {expect_total}");
        for (i, &(weight, _)) in specs.iter().enumerate() {
            let got = sim.user_bytes(i, 200 * MS, 2200 * MS) as f64;
            let fair = expect_total as f64 * f64::from(weight) / f64::from(total_w);
            prop_assert!((got / fair - 1.0).abs() < 0.05, "user {i}: {got} vs fair {fair}");
        }
    }

    /// When a user's downloads end, its share goes to the other backlogged users from the
    /// next refill period on.
    #[test]
    fn idle_share_is_redistributed_within_one_period(
        conns_a in 1usize..20,
        conns_b in 1usize..20,
        stop_ms in 200u64..500,
    ) {
        let g: u64 = 4 << 20;
        let cfg = ShaperConfig { global: Rate::BytesPerSec(g), ..ShaperConfig::default() };
        let mut sim = Sim::new(cfg, 2);
        let a = sim.shaper.user("a", UserLimits::unlimited());
        let b = sim.shaper.user("b", UserLimits::unlimited());
        let (a, b) = (sim.add_user(a), sim.add_user(b));
        for c in 0..conns_a {
            let id = sim.add_conn(a, c % 2, 0, stop_ms * MS);
            sim.conns[id].close_at_end = true;
        }
        for c in 0..conns_b {
            sim.add_conn(b, c % 2, 0, u64::MAX);
        }
        sim.run_until(1000 * MS);
        // From the first full period after A stops, B gets the whole root (within chunking).
        let from = (stop_ms * MS / P + 2) * P;
        let got = sim.user_bytes(b, from, from + 30 * P);
        let expect = g * 30 * P / 1_000_000_000;
        prop_assert!(got as f64 >= expect as f64 * 0.95, "B got {got}, expected {expect}");
    }
}
