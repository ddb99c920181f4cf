//! An album whose tracks are all empty: its zip carries only zip structure, no content byte, so
//! no acknowledged content could ever complete it. Each empty track is delivered once the client
//! acknowledged the zip up to the end of that track's local header (the way a 0-byte file is
//! delivered by its acknowledged head), so curl's download of the zip completes it, once.

use std::process::Command;
use std::time::Duration;

use weir_tests::{curl, eventually, have, on_every_driver, DataDir, Driver, ALICE};

/// alice's completed purchases (`weir history alice --json`), item ids in order.
fn history(data: &DataDir) -> Vec<String> {
    data.ok(&["history", "alice", "--json"], None)
        .lines()
        .filter_map(|l| {
            let rest = l.split("\"item\":\"").nth(1)?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// Album `quiet` of three empty tracks in alice's cart.
fn empty_album() -> DataDir {
    let data = DataDir::new();
    data.add_user("alice", "wonderland");
    let tracks: Vec<String> = (1..=3)
        .map(|i| {
            let p = data.make_file(&format!("{i:02} Silence.flac"), 0, i);
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec!["album", "add", "quiet"];
    args.extend(tracks.iter().map(String::as_str));
    data.ok(&args, None);
    data.ok(&["cart", "add", "alice", "quiet"], None);
    data
}

/// curl of the zip: unzips to three empty tracks, and the album completes exactly once.
fn empty_album_zip_completes_once(driver: Driver) {
    assert!(have("unzip"), "unzip must be installed");
    let data = empty_album();
    let srv = data.serve(driver, &[]);
    let r = curl(&srv.url("/d/quiet.zip"), &["-u", ALICE]);
    assert_eq!(r.status, 200);
    let zip = data.path().join("quiet.zip");
    std::fs::write(&zip, &r.body).unwrap();
    let out = Command::new("unzip").arg("-l").arg(&zip).output().unwrap();
    assert!(out.status.success(), "unzip -l failed");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("02 Silence.flac"), "{listing}");
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["quiet"]),
        "the all-empty album never completed: {:?}",
        data.ok(&["cart", "list", "alice", "--json"], None)
    );
    // Fetched again (the grace period keeps the grant) and across a restart: still once.
    assert_eq!(curl(&srv.url("/d/quiet.zip"), &["-u", ALICE]).status, 200);
    srv.stop();
    let srv = data.serve(driver, &[]);
    srv.stop();
    assert_eq!(history(&data), ["quiet"], "completed more than once");
}

/// A range of the zip that stops inside the first track's local header delivers no track: the
/// album stays in the cart. The rest of the zip (as a resuming client asks for it) delivers the
/// tracks, and the album completes. (Empty parts hold no byte to miss, so the ledger completes
/// an all-empty item on its first credit; see `engine/src/completion/ledger.rs`.)
fn empty_album_zip_in_two_ranges(driver: Driver) {
    let data = empty_album();
    let srv = data.serve(driver, &[]);
    // Each local header is 30 bytes + the 15-byte name: they end at 45, 90 and 135.
    let r = curl(&srv.url("/d/quiet.zip"), &["-u", ALICE, "-r", "0-39"]);
    assert_eq!(r.status, 206);
    // Stopping drains: every credit the first range earned is committed.
    srv.stop();
    assert!(history(&data).is_empty(), "completed from a partial zip");
    let srv = data.serve(driver, &[]);
    let r = curl(&srv.url("/d/quiet.zip"), &["-u", ALICE, "-r", "40-"]);
    assert_eq!(r.status, 206);
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["quiet"]),
        "the resumed zip did not complete the album"
    );
    srv.stop();
}

on_every_driver!(empty_album_zip_completes_once);
on_every_driver!(empty_album_zip_in_two_ranges);
