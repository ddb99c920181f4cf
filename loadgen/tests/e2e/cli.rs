//! The binary itself: rate (open model), compare, --processes, usage errors.

use std::ffi::OsStr;

use crate::common::*;

/// Run weir-load with `args` and require exit code `code` and `needle` in its stderr.
fn fails_with(args: &[impl AsRef<OsStr>], code: i32, needle: &str) {
    let out = weir_load_bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert_eq!(out.status.code(), Some(code), "{shown:?}: {err}");
    assert!(
        err.contains(needle),
        "{shown:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn invalid_flags_get_clap_usage_error() {
    let forty = ["forty", "http://127.0.0.1:1/", "--users", "many"];
    fails_with(&forty, 2, "invalid value 'many'");
    fails_with(
        &["urlopen", "ftp://x/", "--duration", "1s"],
        1,
        "only http:// and https://",
    );
    fails_with(
        &["urlopen", "https://x/", "--insecure", "--cacert", "ca.pem"],
        2,
        "cannot be used with",
    );
    fails_with(
        &[
            "urlopen",
            "https://127.0.0.1:1/",
            "--insecure",
            "--tls-ciphers",
            "RC4",
        ],
        1,
        "unknown suite RC4",
    );
}

#[test]
fn compare_refuses_what_is_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        OsStr::new("compare"),
        dir.path().as_os_str(),
        dir.path().as_os_str(),
    ];
    fails_with(&args, 2, "not a weir-load result");
    std::fs::write(dir.path().join("summary.json"), r#"{"format":"other"}"#).unwrap();
    fails_with(&args, 2, "not a weir-load summary");
}

#[test]
fn rate_corrects_for_coordinated_omission_and_compare_reads_it_back() {
    let small = content(4096, 6);
    let ngx = Nginx::start(&[("f4k", &small)], "");
    let a = ngx.out("rate-a");
    let b = ngx.out("rate-b");
    for (dir, max_users) in [(&a, "50"), (&b, "1")] {
        let st = weir_load_bin()
            .args(["rate", &ngx.url("f4k"), "--rate", "400", "--ramp", "500ms"])
            .args(["--duration", "2s", "--max-users", max_users, "--seed", "1"])
            .args(["--workers", "1", "--no-progress", "--out"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let sa = assert_result_dir(&a);
    let done = sa["downloads_completed"].as_u64().unwrap();
    // 400/s for 1.5 s plus half of it during the 0.5 s ramp: ~700 arrivals.
    assert!((450..=950).contains(&done), "arrivals {done}");
    let h = &sa["histograms"];
    assert!(h["latency"]["p50"].as_u64() >= h["latency_uncorrected"]["p50"].as_u64());
    // One user at a time: arrivals queue, and the corrected latency shows the wait.
    let sb = assert_result_dir(&b);
    let hb = &sb["histograms"];
    assert!(
        sb["arrivals_queued"].as_u64().unwrap() > 0
            || hb["latency"]["max"].as_u64() >= hb["latency_uncorrected"]["max"].as_u64()
    );
    assert!(hb["latency"]["p99"].as_u64() >= hb["latency_uncorrected"]["p99"].as_u64());

    let plot = ngx.dir.path().join("cmp.svg");
    let out = weir_load_bin()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("latency (ms)") && text.contains("ratio"),
        "{text}"
    );
    assert!(std::fs::read_to_string(&plot)
        .unwrap()
        .contains("rate-b: latency"));
}

#[test]
fn processes_split_users_and_sources_and_merge_exactly() {
    let small = content(4096, 7);
    let ngx = Nginx::start(&[("f4k", &small)], "");
    let out = ngx.out("procs");
    let st = weir_load_bin()
        .args([
            "urlopen",
            &ngx.url("f4k"),
            "--threads",
            "6",
            "--duration",
            "2s",
        ])
        .args([
            "--processes",
            "2",
            "--source",
            "127.0.0.2-127.0.0.3",
            "--no-progress",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let s = assert_result_dir(&out);
    assert_eq!(s["processes"], 2);
    let children: Vec<_> = (0..2)
        .map(|i| summary(&out.join(format!("proc-{i}"))))
        .collect();
    let sum: u64 = children
        .iter()
        .map(|c| c["downloads_completed"].as_u64().unwrap())
        .sum();
    assert_eq!(s["downloads_completed"].as_u64().unwrap(), sum);
    let hsum: u64 = children
        .iter()
        .map(|c| c["histograms"]["download"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(s["histograms"]["download"]["count"].as_u64().unwrap(), hsum);
    assert_eq!(children[0]["config"]["threads_this_process"], 3);
    // Each process bound its own source address.
    let log = ngx.access_log();
    for src in ["127.0.0.2", "127.0.0.3"] {
        assert!(log.iter().any(|l| l.ends_with(src)), "{src} in nginx's log");
    }
}
