//! weir-load against nginx: exact bytes, ranged requests, source addresses, error kinds.

use std::collections::BTreeSet;

use crate::common::*;

const MIB: usize = 1 << 20;

#[test]
fn forty_downloads_exact_bytes_over_ranges_from_spread_sources() {
    let file = content(64 * MIB, 1);
    let ngx = Nginx::start(&[("f64m", &file)], "");
    let out = ngx.out("forty");
    let sha = sha256_hex(&file);
    let run = Forty {
        users: 3,
        connections: 8,
        duration: "6s",
        sha256: &sha,
    };
    run.run(&ngx.url("f64m"), &out, &["--source", "127.0.0.2-127.0.0.5"]);
    let s = assert_result_dir(&out);
    assert_eq!(s["scenario"], "forty");
    assert_eq!(s["verification"], "sha256");
    let completed = s["downloads_completed"].as_u64().unwrap();
    assert!(completed >= 1, "at least one download finished: {s:#}");
    assert_eq!(s["downloads_verified"].as_u64().unwrap(), completed);
    assert_eq!(s["hash_mismatches"], 0);
    assert_eq!(s["errors_total"], 0, "errors: {}", s["errors"]);
    // Ends by its duration (slack for a loaded 2-core CI machine hashing in a debug build).
    assert!((5.5..9.0).contains(&s["duration_s"].as_f64().unwrap()));
    for h in ["connect", "ttfb", "stall_gap", "download", "goodput"] {
        assert!(
            s["histograms"][h]["count"].as_u64().unwrap() >= 1,
            "{h} recorded"
        );
    }
    assert_eq!(s["source_addresses"], 4);

    // nginx saw ranged requests, and from every source address asked for.
    let log = ngx.access_log();
    let ranged: Vec<_> = log.iter().filter(|l| l.contains(" 206 bytes=")).collect();
    assert!(
        ranged.len() >= 8,
        "ranged requests in the access log: {log:?}"
    );
    let sources: BTreeSet<&str> = log
        .iter()
        .filter_map(|l| l.split(' ').next_back())
        .collect();
    let want: BTreeSet<&str> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"].into();
    assert_eq!(sources, want, "remote addresses in nginx's log");
}

#[test]
fn urlopen_fetches_full_bodies_and_verifies_each() {
    let small = content(4096, 2);
    let ngx = Nginx::start(&[("f4k", &small)], "");
    let out = ngx.out("urlopen");
    run_cli(&[
        "urlopen",
        &ngx.url("f4k"),
        "--threads",
        "8",
        "--duration",
        "2s",
        "--sha256",
        &sha256_hex(&small),
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    let s = assert_result_dir(&out);
    let done = s["downloads_completed"].as_u64().unwrap();
    assert!(done > 100, "{s:#}");
    assert_eq!(s["downloads_verified"].as_u64().unwrap(), done);
    assert_eq!(s["errors_total"], 0, "errors: {}", s["errors"]);
    assert_eq!(s["useful_bytes"].as_u64().unwrap(), done * 4096);
    let log = ngx.access_log();
    assert!(log
        .iter()
        .all(|l| l.starts_with("GET /f4k HTTP/1.1 200 - 127.0.0.1")));
}

#[test]
fn a_wrong_hash_counts_every_download_as_a_mismatch() {
    let file = content(2 * MIB, 3);
    let ngx = Nginx::start(&[("f", &file)], "");
    let out = ngx.out("wrong");
    let run = Forty {
        users: 2,
        connections: 4,
        duration: "2s",
        sha256: &sha256_hex(b"something else"),
    };
    run.run(&ngx.url("f"), &out, &[]);
    let s = assert_result_dir(&out);
    let done = s["downloads_completed"].as_u64().unwrap();
    assert!(done >= 1);
    assert_eq!(s["hash_mismatches"].as_u64().unwrap(), done);
    assert_eq!(s["errors"]["hash_mismatch"].as_u64().unwrap(), done);
    assert_eq!(s["downloads_verified"], 0);
}

#[test]
fn error_kinds_are_counted_and_runs_end_on_time() {
    let file = content(MIB, 4);
    let extra = "location /noranges/ { max_ranges 0; } location = /r416 { return 416; }";
    let ngx = Nginx::start(&[("f", &file)], extra);
    std::fs::create_dir_all(ngx.dir.path().join("root/noranges")).unwrap();
    std::fs::write(ngx.dir.path().join("root/noranges/f"), &file).unwrap();
    let dead = format!("http://127.0.0.1:{}/f", free_port());
    let cases: [(&str, String, &str); 5] = [
        ("refused", dead, "connect_refused"),
        ("dns", "http://nonexistent.invalid/f".to_string(), "dns"),
        ("missing", ngx.url("nope"), "http_404"),
        ("r416", ngx.url("r416"), "range_not_satisfiable"),
        ("noranges", ngx.url("noranges/f"), "range_ignored"),
    ];
    let sha = sha256_hex(&file);
    let run = Forty {
        users: 2,
        connections: 4,
        duration: "1500ms",
        sha256: &sha,
    };
    for (name, url, kind) in cases {
        let out = ngx.out(name);
        let t0 = std::time::Instant::now();
        run.run(&url, &out, &[]);
        assert!(
            t0.elapsed().as_secs_f64() < 6.0,
            "{name} ended by its duration"
        );
        let s = summary(&out);
        let violations = schema_violations(&s, &schema());
        assert!(violations.is_empty(), "{name}: {violations:#?}");
        assert!(
            s["errors"][kind].as_u64().unwrap_or(0) >= 1,
            "{name}: expected {kind} in {}",
            s["errors"]
        );
        if name == "noranges" {
            // The server ignores Range: each user falls back to one connection and still
            // assembles the exact bytes.
            let done = s["downloads_completed"].as_u64().unwrap();
            assert!(done >= 1);
            assert_eq!(s["downloads_verified"].as_u64().unwrap(), done);
        }
    }
}
