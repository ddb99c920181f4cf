//! RFC details (issue 14, point 7) with curl and raw sockets: `Host` validation, 405 for
//! `OPTIONS *` and `CONNECT`, `If-Match` / `If-Unmodified-Since` (412), and multi-range
//! replies that never outgrow the representation.

use std::time::Duration;

use weir_tests::{basic_auth, curl, on_every_driver, raw, status_of, DataDir, Driver, ALICE};

/// The head of a raw response, as text.
fn head_text(resp: &[u8]) -> String {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    String::from_utf8_lossy(&resp[..end]).into_owned()
}

fn rfc_details(driver: Driver) {
    let data = DataDir::new();
    let file = data.alice_with_item("small", 4096, 3);
    let content = std::fs::read(&file).unwrap();
    let big = data.make_file("big.bin", 1_000_000, 4);
    data.add_item_for("big", &big, "alice");
    let srv = data.serve(driver, &[]);
    let url = srv.url("/d/small");
    let t = Duration::from_secs(5);
    let auth = basic_auth(ALICE);

    // Host must be an authority without userinfo or spaces (RFC 9112 §3.2, RFC 3986).
    for host in ["a b", "a@b", "user:pw@localhost"] {
        let req = format!("GET /d/small HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n");
        assert_eq!(status_of(&raw(srv.addr, req.as_bytes(), t)), 400, "{host}");
    }
    for host in ["localhost:8080", "[::1]", "127.0.0.1"] {
        let req =
            format!("GET /d/small HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        assert_eq!(status_of(&raw(srv.addr, req.as_bytes(), t)), 200, "{host}");
    }

    // OPTIONS * and CONNECT are methods weir does not serve: 405 with Allow, like POST.
    for req in [
        "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ] {
        let resp = raw(srv.addr, req.as_bytes(), t);
        let head = head_text(&resp);
        assert_eq!(status_of(&resp), 405, "{req:?}: {head}");
        assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
    }
    let r = curl(
        &url,
        &["-u", ALICE, "-X", "OPTIONS", "--request-target", "*"],
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));

    // If-Match (strong comparison) and If-Unmodified-Since: 412 when they fail, GET and HEAD.
    let r = curl(&url, &["-u", ALICE]);
    let etag = r.header("etag").unwrap();
    let lm = r.header("last-modified").unwrap();
    for head in [&[][..], &["-I"][..]] {
        let with = |h: &str| {
            let mut a = vec!["-u", ALICE, "-H", h];
            a.extend_from_slice(head);
            curl(&url, &a).status
        };
        assert_eq!(with("If-Match: \"nope\""), 412);
        assert_eq!(
            with(&format!("If-Match: W/{etag}")),
            412,
            "weak never matches"
        );
        assert_eq!(with(&format!("If-Match: \"x\", {etag}")), 200);
        assert_eq!(with("If-Match: *"), 200);
        assert_eq!(
            with("If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT"),
            412
        );
        assert_eq!(with(&format!("If-Unmodified-Since: {lm}")), 200);
        assert_eq!(with("If-Unmodified-Since: garbage"), 200);
    }
    // RFC 9110 §13.2.2 order: If-Match before If-None-Match (412, not 304); a passing If-Match
    // skips If-Unmodified-Since.
    let r = curl(
        &url,
        &[
            "-u",
            ALICE,
            "-H",
            "If-Match: \"nope\"",
            "-H",
            "If-None-Match: *",
        ],
    );
    assert_eq!(r.status, 412);
    assert!(r.body.len() < 100, "412 carries no content");
    let r = curl(
        &url,
        &[
            "-u",
            ALICE,
            "-H",
            &format!("If-Match: {etag}"),
            "-H",
            "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT",
            "-r",
            "0-9",
        ],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &content[..10]);

    // 64 one-byte ranges of a 4 KiB file: one covering range, never more than the file.
    let spec: Vec<String> = (0..64).map(|i| format!("{0}-{0}", i * 64)).collect();
    let r = curl(&url, &["-u", ALICE, "-r", &spec.join(",")]);
    assert_eq!(r.status, 206);
    assert!(
        r.body.len() <= 4096,
        "{} bytes for 64 bytes asked",
        r.body.len()
    );
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 0-4032/4096")
    );
    assert_eq!(r.body, &content[..4033]);
    // Two far-apart ranges of a small file: the multipart body would be longer than the
    // parts are worth, and never longer than the file.
    let r = curl(&url, &["-u", ALICE, "-r", "0-0,4095-4095"]);
    assert_eq!(r.status, 206);
    assert!(r.body.len() <= 4096, "{}", r.body.len());
    // Far apart in a larger file, multipart is still used.
    let r = curl(
        &srv.url("/d/big"),
        &["-u", ALICE, "-r", "0-9,500000-500009"],
    );
    assert_eq!(r.status, 206);
    let ctype = r.header("content-type").unwrap();
    assert!(ctype.starts_with("multipart/byteranges"), "{ctype}");
}

on_every_driver!(rfc_details);

/// `weir item verify` re-reads the content store: a good store passes, a flipped byte and a
/// truncated file are found, and the exit status says so.
#[test]
fn item_verify() {
    let data = DataDir::new();
    data.alice_with_item("song", 200_000, 5);
    let other = data.make_file("other.bin", 3000, 6);
    data.add_item_for("other", &other, "alice");
    let t1 = data.make_file("t1.flac", 5000, 7);
    let t2 = data.make_file("t2.flac", 6000, 8);
    data.ok(
        &[
            "album",
            "add",
            "album",
            t1.to_str().unwrap(),
            t2.to_str().unwrap(),
        ],
        None,
    );
    let out = data.ok(&["item", "verify"], None);
    for id in ["song", "other", "album"] {
        assert!(out.contains(&format!("{id}\tok")), "{out}");
    }

    // Damage the song's file (one bit) and truncate the album's second track.
    let store = data.path().join("data").join("store");
    let song = weir_tests::sha256_file(&data.path().join("song.bin"));
    let track = weir_tests::sha256_file(&t2);
    let mut bytes = std::fs::read(store.join(&song)).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(store.join(&song), &bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(store.join(&track))
        .unwrap();
    f.set_len(100).unwrap();

    let r = data.cli(&["item", "verify"], None);
    assert_eq!(r.status.code(), Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("song\tbad\tsong.bin"), "{}", r.stdout);
    assert!(r.stdout.contains("SHA-256 is"), "{}", r.stdout);
    assert!(r.stdout.contains("album\tbad\tt2.flac"), "{}", r.stdout);
    assert!(r.stdout.contains("size is 100 bytes"), "{}", r.stdout);
    assert!(r.stdout.contains("other\tok"), "{}", r.stdout);
    assert!(r.stderr.contains("2 of 3 item(s) failed"), "{}", r.stderr);
    // Only the items named.
    let out = data.ok(&["item", "verify", "other"], None);
    assert_eq!(out, "other\tok\n");
    let r = data.cli(&["item", "verify", "song"], None);
    assert_eq!(r.status.code(), Some(1));
    let r = data.cli(&["item", "verify", "nope"], None);
    assert_eq!(r.status.code(), Some(1));
}
