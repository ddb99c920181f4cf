//! Every status the server answers, checked with curl (raw sockets only where curl cannot send
//! the malformed shape), for each driver.

use std::time::Duration;

use weir_tests::{basic_auth, curl, on_every_driver, raw, status_of, DataDir, Driver, ALICE};

struct Fixture {
    data: DataDir,
    content: Vec<u8>,
}

fn fixture() -> Fixture {
    let data = DataDir::new();
    let file = data.alice_with_item("song", 100_000, 7);
    data.add_user("bob", "builder");
    let other = data.make_file("other.bin", 1000, 8);
    data.ok(&["item", "add", "other", other.to_str().unwrap()], None);
    let content = std::fs::read(&file).unwrap();
    Fixture { data, content }
}

fn statuses(driver: Driver) {
    let f = fixture();
    let srv = f.data.serve(driver, &[]);
    let url = srv.url("/d/song");

    // 200 full body with validators.
    let r = curl(&url, &["-u", ALICE]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.content);
    assert_eq!(r.header("accept-ranges").as_deref(), Some("bytes"));
    let etag = r.header("etag").expect("etag");
    assert!(etag.starts_with('"'), "strong etag: {etag}");
    let last_modified = r.header("last-modified").expect("last-modified");

    // HEAD: same headers, no body.
    let r = curl(&url, &["-u", ALICE, "-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("100000"));
    // curl -I writes the head to the output file too; no content may follow it.
    assert!(
        r.body.len() < 1000,
        "HEAD sent a body ({} bytes)",
        r.body.len()
    );

    // 206 single, suffix, open.
    let r = curl(&url, &["-u", ALICE, "-r", "100-199"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.content[100..200]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 100-199/100000")
    );
    let r = curl(&url, &["-u", ALICE, "-r", "-500"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.content[99_500..]);
    let r = curl(&url, &["-u", ALICE, "-r", "99000-"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.content[99_000..]);

    // 206 multipart/byteranges (ranges far enough apart not to be coalesced).
    let r = curl(&url, &["-u", ALICE, "-r", "0-9,5000-5009"]);
    assert_eq!(r.status, 206);
    let ctype = r.header("content-type").unwrap();
    assert!(
        ctype.starts_with("multipart/byteranges; boundary="),
        "{ctype}"
    );
    let boundary = ctype.split("boundary=").nth(1).unwrap().to_string();
    let body = r.body.clone();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("--{boundary}\r\n")));
    assert!(text.contains("Content-Range: bytes 0-9/100000"));
    assert!(text.contains("Content-Range: bytes 5000-5009/100000"));
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        body.len()
    );
    let needle = &f.content[5000..5010];
    assert!(body.windows(10).any(|w| w == needle));

    // 416 with Content-Range: bytes */LEN.
    let r = curl(&url, &["-u", ALICE, "-r", "200000-"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range").as_deref(), Some("bytes */100000"));

    // If-Range: matching ETag honours the range, a stale one gets the full body.
    let r = curl(
        &url,
        &["-u", ALICE, "-r", "0-9", "-H", &format!("If-Range: {etag}")],
    );
    assert_eq!(r.status, 206);
    let r = curl(
        &url,
        &["-u", ALICE, "-r", "0-9", "-H", "If-Range: \"stale\""],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    let r = curl(
        &url,
        &[
            "-u",
            ALICE,
            "-r",
            "0-9",
            "-H",
            &format!("If-Range: {last_modified}"),
        ],
    );
    assert_eq!(r.status, 206);

    // 304 on If-None-Match and If-Modified-Since.
    let r = curl(
        &url,
        &["-u", ALICE, "-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = curl(
        &url,
        &[
            "-u",
            ALICE,
            "-H",
            &format!("If-Modified-Since: {last_modified}"),
        ],
    );
    assert_eq!(r.status, 304);

    // 401: no credentials, wrong password, unknown user.
    let r = curl(&url, &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = curl(&url, &["-u", "alice:wrong"]);
    assert_eq!(r.status, 401);
    let r = curl(&url, &["-u", "mallory:x"]);
    assert_eq!(r.status, 401);

    // 403: an item not in the user's cart; another user's cart item.
    let r = curl(&srv.url("/d/other"), &["-u", ALICE]);
    assert_eq!(r.status, 403);
    let r = curl(&url, &["-u", "bob:builder"]);
    assert_eq!(r.status, 403);

    // Signed links: valid, for another item, expired, tampered.
    let link = f.data.ok(
        &["token", "--user", "alice", "--item", "song", "--ttl", "600"],
        None,
    );
    let link = link.trim();
    let r = curl(&srv.url(link), &[]);
    assert_eq!(r.status, 200, "signed link {link}");
    assert_eq!(r.body, f.content);
    let other_link = link.replacen("/d/song", "/d/other", 1);
    assert_eq!(curl(&srv.url(&other_link), &[]).status, 403);
    let secret = weir::storage::Store::open(&f.data.path().join("data"))
        .unwrap()
        .secret()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = weir::token::LinkClaims {
        user: "alice".into(),
        item: "song".into(),
        expires: now - 10,
        rate_class: None,
    };
    let expired = format!("/d/song?{}", weir::token::mint(&secret, &claims));
    assert_eq!(curl(&srv.url(&expired), &[]).status, 403);
    let tampered = link.replacen("u=alice", "u=bob", 1);
    assert_eq!(curl(&srv.url(&tampered), &[]).status, 403);

    // 404: unknown item; paths that try to escape the catalog.
    assert_eq!(curl(&srv.url("/d/nope"), &["-u", ALICE]).status, 404);
    assert_eq!(curl(&srv.url("/etc/passwd"), &["-u", ALICE]).status, 404);
    for escape in ["/d/..%2f..%2fetc%2fpasswd", "/d/../../etc/passwd"] {
        let r = curl(&srv.url(escape), &["-u", ALICE, "--path-as-is"]);
        assert_eq!(r.status, 404, "{escape}");
    }

    // 405 with Allow.
    let r = curl(&url, &["-u", ALICE, "-X", "POST", "-d", "x"]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));

    // 414 and 431.
    let long = format!("/d/{}", "a".repeat(5000));
    assert_eq!(curl(&srv.url(&long), &["-u", ALICE]).status, 414);
    let big = format!("X-Big: {}", "b".repeat(9000));
    assert_eq!(curl(&url, &["-u", ALICE, "-H", &big]).status, 431);

    // 400: malformed, and request smuggling shapes (then the connection closes).
    let t = Duration::from_secs(5);
    assert_eq!(status_of(&raw(srv.addr, b"GARBAGE\r\n\r\n", t)), 400);
    let auth = basic_auth(ALICE);
    let cl_te = format!(
        "GET /d/song HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(srv.addr, cl_te.as_bytes(), t)), 400);
    let dup_cl = format!(
        "GET /d/song HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nContent-Length: 0\r\n\r\n"
    );
    let resp = raw(srv.addr, dup_cl.as_bytes(), t);
    assert_eq!(status_of(&resp), 400);
    assert!(String::from_utf8_lossy(&resp).contains("Connection: close"));

    // Keep-alive: curl fetches twice over one connection (the second transfer opens none).
    let out = std::process::Command::new("curl")
        .args(["-s", "-u", ALICE, "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-w", "%{http_code}:%{num_connects} "])
        .args([&url, &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200:1 200:0");

    srv.stop();
}

on_every_driver!(statuses);
