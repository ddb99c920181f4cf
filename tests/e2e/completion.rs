//! Completion: an item leaves the cart only when every byte reached the client, however it was
//! fetched (40 connections, a zip, tracks, a mix), exactly once (across a SIGKILL: see `crash`); never for a
//! download that was cut; the shop's webhook hears of it even if it fails at first.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_tests::{
    basic_auth, curl, eventually, get_on_raw_socket, have, on_every_driver, sha256_file,
    wait_until_receive_buffer_full, CurlResult, DataDir, Driver, Metrics, Server, SlowDownload,
    ALICE,
};

/// `weir cart list alice --json` as (item, delivered bytes) pairs.
fn cart(data: &DataDir) -> Vec<(String, u64)> {
    data.ok(&["cart", "list", "alice", "--json"], None)
        .lines()
        .map(|l| {
            let item = field(l, "item").unwrap();
            let delivered = field(l, "delivered_bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (item, delivered)
        })
        .collect()
}

/// `weir history alice --json` items.
fn history(data: &DataDir) -> Vec<String> {
    data.ok(&["history", "alice", "--json"], None)
        .lines()
        .map(|l| field(l, "item").unwrap())
        .collect()
}

/// A top-level field of a one-line JSON object, as text (strings unquoted).
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    let rest = rest.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Wait until the journal's delivered bytes for alice's (only) cart item satisfy `ok`
/// (`what` says how, for the failure message).
fn wait_for_progress(data: &DataDir, what: &str, ok: impl Fn(u64) -> bool) {
    assert!(
        eventually(Duration::from_secs(20), || cart(data)
            .first()
            .is_some_and(|c| ok(c.1))),
        "journal never showed {what} bytes delivered: cart {:?}, history {:?}",
        cart(data),
        history(data)
    );
}

/// Wait until the journal shows exactly `want` bytes delivered: the ledger has applied and
/// flushed every credit up to there, so any completion those credits caused has been written
/// too.
fn journaled(data: &DataDir, want: u64) {
    wait_for_progress(data, &format!("exactly {want}"), |d| d == want);
}

/// Wait until the journal shows at least `bytes` delivered (the download is under way).
fn progress_reaches(data: &DataDir, bytes: u64) {
    wait_for_progress(data, &format!("at least {bytes}"), |d| d >= bytes);
}

/// `GET path` as alice with `Range: bytes=range`.
fn ranged(srv: &Server, path: &str, range: &str) -> CurlResult {
    curl(&srv.url(path), &["-u", ALICE, "-r", range])
}

/// Wait until `item` is alice's one completed purchase.
fn completes(data: &DataDir, item: &str) {
    assert!(
        eventually(Duration::from_secs(10), || history(data) == [item]),
        "{item} not completed: cart {:?}",
        cart(data)
    );
}

fn album_fixture() -> (DataDir, Vec<std::path::PathBuf>) {
    let data = DataDir::new();
    data.add_user("alice", "wonderland");
    let tracks: Vec<_> = (1..=3)
        .map(|i| data.make_file(&format!("track{i:02}.flac"), 3 << 20 | (i * 1000), i as u64))
        .collect();
    let mut args = vec!["album", "add", "best"];
    let paths: Vec<String> = tracks
        .iter()
        .map(|t| t.to_str().unwrap().to_string())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    data.ok(&args, None);
    data.ok(&["cart", "add", "alice", "best"], None);
    (data, tracks)
}

/// The album as a zip through `axel -n 40`: unzips to the exact tracks and completes the album.
fn zip_with_axel(driver: Driver) {
    assert!(
        have("axel") && have("unzip"),
        "axel and unzip must be installed"
    );
    let (data, tracks) = album_fixture();
    let srv = data.serve(driver, &[]);
    let out = data.path().join("best.zip");
    let url = format!("http://{ALICE}@{}/d/best.zip", srv.addr);
    let st = weir_tests::axel(40, &out, &url);
    assert!(st.success(), "axel failed: {st}");
    let st = Command::new("unzip").arg("-tq").arg(&out).status().unwrap();
    assert!(st.success(), "unzip -t failed");
    let dir = data.path().join("x");
    let st = Command::new("unzip")
        .arg("-q")
        .arg(&out)
        .arg("-d")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    for t in &tracks {
        let name = t.file_name().unwrap();
        assert_eq!(
            sha256_file(&dir.join(name)),
            sha256_file(t),
            "{name:?} differs"
        );
    }
    completes(&data, "best");
    assert!(cart(&data).is_empty());
    // The grace period: the download manager's stragglers still get their ranges.
    assert_eq!(ranged(&srv, "/d/best.zip", "0-99").status, 206);
    srv.stop();
    assert_eq!(history(&data), ["best"], "completed once");
}

/// Whole track 1, track 2 in two ranges, track 3 through a range of the zip: complete, and not
/// before track 3.
fn album_completed_by_a_mix(driver: Driver) {
    let (data, tracks) = album_fixture();
    let srv = data.serve(driver, &[]);
    let size = |i: usize| std::fs::metadata(&tracks[i]).unwrap().len();
    assert_eq!(curl(&srv.url("/d/best/1"), &["-u", ALICE]).status, 200);
    let half = size(1) / 2;
    assert_eq!(
        ranged(&srv, "/d/best/2", &format!("0-{}", half - 1)).status,
        206
    );
    journaled(&data, size(0) + half);
    assert!(
        history(&data).is_empty(),
        "completed by one and a half tracks"
    );
    assert_eq!(ranged(&srv, "/d/best/2", &format!("{half}-")).status, 206);
    journaled(&data, size(0) + size(1));
    assert!(history(&data).is_empty(), "completed without track 3");
    // Track 3's data sits at the end of the zip, before the central directory: fetch the last
    // part of the zip generously (the whole of track 3 plus the directory).
    let zip_len: u64 = curl(&srv.url("/d/best.zip"), &["-u", ALICE, "-I"])
        .header("content-length")
        .unwrap()
        .parse()
        .unwrap();
    // Bad input: a zip range past the end is 416 like any file; a track out of range is 404.
    let r = ranged(&srv, "/d/best.zip", &format!("{zip_len}-"));
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{zip_len}"))
    );
    assert_eq!(curl(&srv.url("/d/best/4"), &["-u", ALICE]).status, 404);
    assert_eq!(curl(&srv.url("/d/best/0"), &["-u", ALICE]).status, 404);
    let from = zip_len - size(2) - 4096;
    let r = ranged(&srv, "/d/best.zip", &format!("{from}-"));
    assert_eq!(r.status, 206);
    completes(&data, "best");
    srv.stop();
}

fn file_fixture(size: usize) -> (DataDir, std::path::PathBuf) {
    let data = DataDir::new();
    let f = data.alice_with_item("movie", size, 9);
    (data, f)
}

/// A rate-limited download killed mid-way never completes, and credits at most what it got.
fn killed_download_never_completes(driver: Driver) {
    let (data, _) = file_fixture(32 << 20);
    let srv = data.serve(driver, &[]);
    let dl = SlowDownload::start(data.path(), &srv.url("/d/movie"), ALICE, "1M");
    // Kill it once the journal shows it under way.
    progress_reaches(&data, 1);
    dl.kill();
    // A clean stop flushes the journal: what was credited is all there.
    assert!(srv.stop().success());
    let delivered = cart(&data)[0].1;
    assert!(
        delivered > 0 && delivered < 32 << 20,
        "credited {delivered}"
    );
    assert!(history(&data).is_empty(), "a killed download completed");
    assert_eq!(cart(&data).len(), 1);
}

/// A client that reads nothing delivers nothing, however long the server tries.
fn zero_window_delivers_nothing(driver: Driver) {
    // More than the socket buffers can hold, so the server's send stalls.
    let (data, _) = file_fixture(64 << 20);
    let token = "t0ken";
    let srv = data.serve(
        driver,
        &[
            "--send-timeout",
            "2s",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            token,
        ],
    );
    let admin = srv.admin_url();
    let s = get_on_raw_socket(srv.addr, "/d/movie", &basic_auth(ALICE));
    // Never read. The server's send stalls and its send timeout cuts the connection.
    assert!(
        eventually(Duration::from_secs(15), || Metrics::fetch(&admin, token)
            .value("weir_timeouts_total")
            >= 1),
        "stalled send never timed out"
    );
    let metrics = Metrics::fetch(&admin, token);
    assert!(
        metrics.value("weir_bytes_sent_total") > 0,
        "nothing was sent"
    );
    assert_eq!(
        metrics.value("weir_bytes_credited_total"),
        0,
        "the server credited a client that read nothing"
    );
    drop(s);
    // A clean stop flushes the journal: nothing there either.
    assert!(srv.stop().success());
    assert_eq!(
        cart(&data)[0].1,
        0,
        "a client that read nothing was credited"
    );
    assert!(history(&data).is_empty());
}

/// A download manager shortens a running connection's range when it re-splits (axel gives half
/// of the largest remaining range to an idle connection): the old connection reads up to its new
/// end and drops, with unread bytes in its receive buffer, and another connection fetches the
/// rest. What the first one read counts, so the item completes.
fn resplit_connection_dropped_mid_range(driver: Driver) {
    const SIZE: usize = 1 << 20;
    const READ: usize = 40_000;
    let (data, _) = file_fixture(SIZE);
    let srv = data.serve(driver, &[]);
    let range = format!("{}Range: bytes=0-{}\r\n", basic_auth(ALICE), SIZE - 1);
    let mut s = get_on_raw_socket(srv.addr, "/d/movie", &range);
    // Read the head and READ body bytes, as the re-split's new end.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let body_at = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        got.starts_with(b"HTTP/1.1 206"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut body = got.len() - body_at;
    while body < READ {
        let want = (READ - body).min(buf.len());
        let n = s.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "server closed early");
        body += n;
    }
    // Stop reading until the server has filled the receive buffer (its window is zero), then
    // drop the connection with those bytes unread: the client's kernel resets it.
    wait_until_receive_buffer_full(&s);
    drop(s);
    // The other connection fetches the rest of the range.
    let r = ranged(&srv, "/d/movie", &format!("{READ}-"));
    assert_eq!(r.status, 206);
    completes(&data, "movie");
    srv.stop();
}

/// A webhook receiver that fails the first POST still gets the completion, with the same
/// Idempotency-Key on the retry.
fn webhook_retries_with_stable_key(driver: Driver) {
    let (data, _) = file_fixture(100_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<(u16, String, String)>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let (key, body) = weir_tests::read_webhook_post(&stream);
            let status = if i == 0 { 500 } else { 200 };
            seen2
                .lock()
                .unwrap()
                .push((status, key, String::from_utf8_lossy(&body).into_owned()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let srv = data.serve(driver, &["--webhook", &hook]);
    assert_eq!(curl(&srv.url("/d/movie"), &["-u", ALICE]).status, 200);
    assert!(
        eventually(Duration::from_secs(30), || seen.lock().unwrap().len() >= 2),
        "webhook not retried: {:?}",
        seen.lock().unwrap()
    );
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls[0].0, 500);
    assert_eq!(calls[1].0, 200);
    assert!(!calls[0].1.is_empty(), "no Idempotency-Key");
    assert_eq!(
        calls[0].1, calls[1].1,
        "Idempotency-Key changed between retries"
    );
    assert!(
        calls[1].2.contains("\"item\":\"movie\""),
        "payload: {}",
        calls[1].2
    );
    assert!(calls[1].2.contains("\"user\":\"alice\""));
    srv.stop();
}

/// After the grace period a completed item is no longer downloadable.
fn grace_period_ends(driver: Driver) {
    let (data, _) = file_fixture(10_000);
    let srv = data.serve(driver, &["--grace", "2s"]);
    assert_eq!(curl(&srv.url("/d/movie"), &["-u", ALICE]).status, 200);
    completes(&data, "movie");
    assert!(
        eventually(Duration::from_secs(10), || curl(
            &srv.url("/d/movie"),
            &["-u", ALICE]
        )
        .status
            == 403),
        "still downloadable after the grace period"
    );
    srv.stop();
}

on_every_driver!(
    zip_with_axel,
    album_completed_by_a_mix,
    killed_download_never_completes,
    zero_window_delivers_nothing,
    resplit_connection_dropped_mid_range,
    webhook_retries_with_stable_key,
    grace_period_ends,
);
