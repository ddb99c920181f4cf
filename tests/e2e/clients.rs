//! Real download managers against weir: `axel -n 40` and `aria2c -x16 -s16` fetch a 64 MiB
//! file over ranged connections, and the SHA-256 of what they wrote must match.

use std::process::Command;

use weir_tests::{have, on_every_driver, sha256_file, sha256_hex, DataDir, Driver};

const SIZE: usize = 64 << 20;

fn download_managers(driver: Driver) {
    assert!(
        have("axel") && have("aria2c"),
        "axel and aria2c must be installed (apt-get install axel aria2)"
    );
    let data = DataDir::new();
    let file = data.alice_with_item("big", SIZE, 42);
    let want = sha256_hex(&std::fs::read(&file).unwrap());
    let srv = data.serve(driver, &[]);

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

on_every_driver!(download_managers);
