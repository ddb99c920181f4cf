//! The binary itself: rate (open model), compare, --processes, usage errors.

use std::process::Command;

use crate::common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-load"))
}

#[test]
fn invalid_flags_get_clap_usage_error() {
    let out = bin()
        .args(["forty", "http://127.0.0.1:1/", "--users", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'many'"));
    let out = bin()
        .args(["urlopen", "https://x/", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}

#[test]
fn compare_refuses_what_is_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["compare"])
        .arg(dir.path())
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a weir-load result"), "{err}");
    std::fs::write(dir.path().join("summary.json"), r#"{"format":"other"}"#).unwrap();
    let out = bin()
        .arg("compare")
        .arg(dir.path())
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a weir-load summary"));
}

#[test]
fn rate_corrects_for_coordinated_omission_and_compare_reads_it_back() {
    let small = content(4096, 6);
    let Some(ngx) = Nginx::start(&[("f4k", &small)], "") else {
        return;
    };
    let a = ngx.out("rate-a");
    let b = ngx.out("rate-b");
    for (dir, max_users) in [(&a, "50"), (&b, "1")] {
        let st = bin()
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
    let out = bin()
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
    let Some(ngx) = Nginx::start(&[("f4k", &small)], "") else {
        return;
    };
    let out = ngx.out("procs");
    let st = bin()
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
