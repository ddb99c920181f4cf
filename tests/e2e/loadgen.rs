//! weir-load against the real weir: the 40-connection scenario assembles and verifies the exact
//! bytes, and `weir-load demo` runs end to end on the embedded default.

use std::process::Command;

use weir_tests::{bin, on_every_driver, sha256_hex, summary_number, DataDir, Driver, ALICE};

fn forty_against_weir_verifies_every_byte(driver: Driver) {
    let data = DataDir::new();
    let file = data.alice_with_item("big", 32 << 20, 11);
    let hash = sha256_hex(&std::fs::read(&file).unwrap());
    let srv = data.serve(driver, &["--grace", "1h"]);
    let out = data.path().join("run");
    let st = Command::new(bin("weir-load"))
        .args([
            "forty",
            &srv.url("/d/big"),
            "--users",
            "2",
            "--connections",
            "40",
        ])
        .args([
            "--duration",
            "6s",
            "--credentials",
            ALICE,
            "--sha256",
            &hash,
        ])
        .args(["--no-progress", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(
        summary_number(&summary, "downloads_completed") >= 1.0,
        "{summary}"
    );
    assert_eq!(
        summary_number(&summary, "hash_mismatches"),
        0.0,
        "{summary}"
    );
    assert!(out.join("download.hgrm").exists());
    srv.stop();
}

on_every_driver!(forty_against_weir_verifies_every_byte);

/// `weir-load demo` starts `weir serve --demo` itself, on its default driver.
#[test]
fn demo_runs_against_weir() {
    let _data = DataDir::new(); // shares the e2e gate
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("weir-load"))
        .args(["demo", "--duration", "4s", "--users", "2", "--out"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("demo credentials: demo:"), "{text}");
    assert!(
        dir.path().join("demo").join("summary.json").exists(),
        "{text}"
    );
}
