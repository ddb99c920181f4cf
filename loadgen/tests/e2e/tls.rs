//! weir-load over HTTPS against nginx with ssl and a test CA made by the test: forty's 40
//! connections with exact bytes (--cacert), urlopen with and without keep-alive (--insecure,
//! TLS 1.3 and TLS 1.2 suites),
//! rate, compare of TLS runs, and an untrusted certificate refused with a clear error.

use crate::common::*;

const MIB: usize = 1 << 20;

#[test]
fn forty_over_https_with_cacert_downloads_exact_bytes_on_40_connections() {
    let ca = TestCa::new("weir-load test CA");
    let file = content(16 * MIB, 11);
    let ngx = Nginx::start_tls(&[("f16m", &file)], "", &ca);
    let url = ngx.url("f16m");
    assert!(url.starts_with("https://"));
    let out = ngx.out("forty-tls");
    let sha = sha256_hex(&file);
    let run = Forty {
        users: 2,
        connections: 40,
        duration: "8s",
        sha256: &sha,
    };
    let cacert = ca.ca();
    // No --reference-file: the reference GET that builds the block list goes over TLS too.
    run.run(&url, &out, &["--cacert", cacert.to_str().unwrap()]);
    let s = assert_result_dir(&out);
    assert_eq!(s["target"], url);
    assert_eq!(s["verification"], "sha256");
    let completed = s["downloads_completed"].as_u64().unwrap();
    assert!(completed >= 1, "at least one download finished: {s:#}");
    assert_eq!(s["downloads_verified"].as_u64().unwrap(), completed);
    assert_eq!(s["hash_mismatches"], 0);
    assert_eq!(s["errors_total"], 0, "errors: {}", s["errors"]);
    assert!(
        s["max_open_connections"].as_u64().unwrap() >= 40,
        "a user held its 40 connections at once: {s:#}"
    );
    // Every connection handshook once; connect and ttfb are measured as in clear text.
    let handshakes = s["tls_handshakes"].as_u64().unwrap();
    assert!(handshakes >= 40, "handshakes {handshakes}");
    assert!(handshakes <= s["connections_opened"].as_u64().unwrap());
    assert!(s["tls_handshake_mean_us"].as_f64().unwrap() > 0.0);
    for h in ["connect", "ttfb", "stall_gap", "download", "goodput"] {
        assert!(
            s["histograms"][h]["count"].as_u64().unwrap() >= 1,
            "{h} recorded"
        );
    }
    // nginx answered ranged requests (it logs only requests that arrived decrypted).
    let log = ngx.access_log();
    let ranged = log.iter().filter(|l| l.contains(" 206 bytes=")).count();
    assert!(ranged >= 40, "ranged requests over TLS: {}", log.len());
}

#[test]
fn urlopen_and_rate_over_https_insecure_and_compare_reads_them() {
    let ca = TestCa::new("weir-load test CA");
    let small = content(4096, 12);
    let ngx = Nginx::start_tls(&[("f4k", &small)], "", &ca);
    let url = ngx.url("f4k");
    let sha = sha256_hex(&small);
    let kept = ngx.out("kept");
    let fresh = ngx.out("fresh");
    // Keep-alive on TLS 1.3 (AES-128-GCM only); a connection per request on TLS 1.2.
    let tls13 = ["--tls-ciphers", "TLS13_AES_128_GCM_SHA256"];
    let tls12 = [
        "--no-keepalive",
        "--tls-ciphers",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ];
    for (dir, extra) in [(&kept, &tls13[..]), (&fresh, &tls12[..])] {
        let mut args = vec!["urlopen", &url, "--threads", "4", "--duration", "2s"];
        args.extend(["--sha256", &sha, "--insecure", "--no-progress", "--out"]);
        args.push(dir.to_str().unwrap());
        args.extend(extra);
        run_cli(&args);
    }
    let k = assert_result_dir(&kept);
    let f = assert_result_dir(&fresh);
    for s in [&k, &f] {
        let done = s["downloads_completed"].as_u64().unwrap();
        assert!(done >= 10, "responses: {s:#}");
        assert_eq!(
            s["downloads_verified"].as_u64().unwrap(),
            done,
            "exact bytes"
        );
        assert_eq!(s["errors_total"], 0, "errors: {}", s["errors"]);
    }
    // nginx saw both protocols, each with the suite asked for.
    let log = ngx.access_log();
    let over = |p: &str| log.iter().filter(|l| l.contains(p)).count();
    // (Requests still in flight when the run ended are in nginx's log too.)
    let answered = k["responses"].as_u64().unwrap() as usize;
    let asked = k["requests"].as_u64().unwrap() as usize;
    let on13 = over(" TLSv1.3/TLS_AES_128_GCM_SHA256 ");
    assert!(
        (answered..=asked).contains(&on13),
        "keep-alive run on TLS 1.3 AES-128-GCM: {on13} logged, {answered} answered, {asked} asked"
    );
    assert!(over(" TLSv1.2/ECDHE-ECDSA-AES128-GCM-SHA256 ") >= 10);
    // Keep-alive: one handshake per connection, many requests on each.
    let kh = k["tls_handshakes"].as_u64().unwrap();
    assert!((1..=k["connections_opened"].as_u64().unwrap()).contains(&kh));
    assert!(kh * 5 < k["responses"].as_u64().unwrap(), "{k:#}");
    // No keep-alive: a handshake for every request.
    assert!(f["tls_handshakes"].as_u64().unwrap() >= f["downloads_completed"].as_u64().unwrap());

    let rated = ngx.out("rate");
    let cacert = ca.ca();
    let st = weir_load_bin()
        .args([
            "rate",
            &url,
            "--rate",
            "50",
            "--duration",
            "2s",
            "--seed",
            "3",
        ])
        .args([
            "--cacert",
            cacert.to_str().unwrap(),
            "--no-progress",
            "--out",
        ])
        .arg(&rated)
        .status()
        .unwrap();
    assert!(st.success());
    let r = assert_result_dir(&rated);
    assert!(r["downloads_completed"].as_u64().unwrap() >= 20, "{r:#}");
    assert_eq!(r["errors_total"], 0, "errors: {}", r["errors"]);

    let plot = ngx.dir.path().join("cmp.svg");
    let out = weir_load_bin()
        .arg("compare")
        .arg(&kept)
        .arg(&fresh)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ttfb (ms)") && text.contains("ratio"),
        "{text}"
    );
}

#[test]
fn an_untrusted_certificate_is_refused_with_a_clear_error() {
    let ca = TestCa::new("weir-load test CA");
    let other = TestCa::new("some other CA");
    let small = content(4096, 13);
    let ngx = Nginx::start_tls(&[("f4k", &small)], "", &ca);
    let url = ngx.url("f4k");
    let out_dir = ngx.out("refused");
    let wrong = other.ca();
    let out = weir_load_bin()
        .args(["urlopen", &url, "--threads", "2", "--duration", "2s"])
        .args([
            "--cacert",
            wrong.to_str().unwrap(),
            "--no-progress",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("certificate is not trusted") && err.contains("--cacert"),
        "{err}"
    );
    assert!(!out_dir.join("summary.json").exists(), "no run happened");

    // Neither --cacert nor --insecure: said before connecting anywhere.
    let out = weir_load_bin()
        .args(["forty", &url, "--users", "1", "--duration", "1s"])
        .args(["--no-progress", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--cacert FILE") && err.contains("--insecure"),
        "{err}"
    );
    // nginx never got a request in clear or decrypted.
    assert!(ngx.access_log().is_empty(), "{:?}", ngx.access_log());
}
