//! Real download managers against weir: `axel -n 40` and `aria2c -x16 -s16` fetch a 64 MiB
//! file over ranged connections, and the SHA-256 of what they wrote must match.

use std::process::Command;

use weir_tests::{have, sha256_file, sha256_hex, DataDir, DRIVERS};

const SIZE: usize = 64 << 20;

fn managers(driver: &[&str]) {
    assert!(
        have("axel") && have("aria2c"),
        "axel and aria2c must be installed (apt-get install axel aria2)"
    );
    let data = DataDir::new();
    data.add_user("alice", "wonderland");
    let file = data.make_file("big.bin", SIZE, 42);
    let want = sha256_hex(&std::fs::read(&file).unwrap());
    data.add_item_for("big", &file, "alice");
    let srv = data.start(driver);

    let out = data.path().join("axel.out");
    let url = format!("http://alice:wonderland@{}/d/big", srv.addr);
    let st = weir_tests::axel(40, &out, &url);
    assert!(st.success(), "axel failed: {st}");
    assert_eq!(sha256_file(&out), want, "axel -n 40 bytes differ");

    let st = Command::new("aria2c")
        .args([
            "-q",
            "-x16",
            "-s16",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--http-user=alice",
            "--http-passwd=wonderland",
            "-d",
        ])
        .arg(data.path())
        .args(["-o", "aria.out"])
        .arg(srv.url("/d/big"))
        .status()
        .expect("run aria2c");
    assert!(st.success(), "aria2c failed: {st}");
    assert_eq!(
        sha256_file(&data.path().join("aria.out")),
        want,
        "aria2c bytes differ"
    );
    srv.stop();
}

#[test]
fn download_managers_uring() {
    managers(DRIVERS[0].1);
}

#[test]
fn download_managers_uring_minimal() {
    managers(DRIVERS[1].1);
}

#[test]
fn download_managers_epoll() {
    managers(DRIVERS[2].1);
}
