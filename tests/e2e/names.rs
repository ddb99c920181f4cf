//! Downloads are saved under their names: `Content-Disposition: attachment` with the original
//! file name (a file's display name from `--name`, a track's own file name, an album's name +
//! `.zip`) and a `Content-Type` from the extension, on GET and HEAD alike. Checked the way users
//! save files: curl `-OJ` (reads the ASCII `filename` fallback), wget `--content-disposition`
//! (reads the UTF-8 `filename*`), and headless Chromium driven through the DevTools protocol,
//! which must save track 2 of an album as "02 Song.flac".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weir_tests::{curl, have, on_every_driver, sha256_file, DataDir, Driver, Server, ALICE};

/// The items: `report` (a PDF whose name has quotes), `movie` (display name "Björk – Jóga
/// (live)", saved with its original `.mkv`) and album `best` named "Best Of" (tracks "01
/// Intro.flac", "02 Song.flac", "03 Café.flac"). Returns the data dir and each source file by
/// the name a client should save it as (the UTF-8 names).
fn catalog() -> (DataDir, BTreeMap<&'static str, PathBuf>) {
    let data = DataDir::new();
    data.add_user("alice", "wonderland");
    let report = data.make_file("Report \"Q3\".pdf", 70_000, 1);
    let movie = data.make_file("movie.mkv", 150_000, 2);
    let t1 = data.make_file("01 Intro.flac", 40_000, 3);
    let t2 = data.make_file("02 Song.flac", 90_000, 4);
    let t3 = data.make_file("03 Café.flac", 30_000, 5);
    let p = |f: &Path| f.to_str().unwrap().to_string();
    data.ok(&["item", "add", "report", &p(&report)], None);
    data.ok(
        &[
            "item",
            "add",
            "movie",
            &p(&movie),
            "--name",
            "Björk – Jóga (live)",
        ],
        None,
    );
    data.ok(
        &[
            "album",
            "add",
            "best",
            &p(&t1),
            &p(&t2),
            &p(&t3),
            "--name",
            "Best Of",
        ],
        None,
    );
    for id in ["report", "movie", "best"] {
        data.ok(&["cart", "add", "alice", id], None);
    }
    let files = BTreeMap::from([
        ("Report \"Q3\".pdf", report),
        ("Björk – Jóga (live).mkv", movie),
        ("02 Song.flac", t2),
        ("03 Café.flac", t3),
    ]);
    (data, files)
}

/// URL path, `Content-Disposition`, `Content-Type` of each representation.
const EXPECTED: [(&str, &str, &str); 5] = [
    (
        "/d/report",
        "attachment; filename=\"Report _Q3_.pdf\"; filename*=UTF-8''Report%20%22Q3%22.pdf",
        "application/pdf",
    ),
    (
        "/d/movie",
        "attachment; filename=\"Bj_rk _ J_ga (live).mkv\"; \
         filename*=UTF-8''Bj%C3%B6rk%20%E2%80%93%20J%C3%B3ga%20%28live%29.mkv",
        "video/x-matroska",
    ),
    (
        "/d/best/2",
        "attachment; filename=\"02 Song.flac\"; filename*=UTF-8''02%20Song.flac",
        "audio/flac",
    ),
    (
        "/d/best/3",
        "attachment; filename=\"03 Caf_.flac\"; filename*=UTF-8''03%20Caf%C3%A9.flac",
        "audio/flac",
    ),
    (
        "/d/best.zip",
        "attachment; filename=\"Best Of.zip\"; filename*=UTF-8''Best%20Of.zip",
        "application/zip",
    ),
];

/// GET, HEAD and a ranged GET carry the same name and type.
fn headers_name_every_representation(driver: Driver) {
    let (data, _) = catalog();
    let srv = data.serve(driver, &[]);
    for (path, disposition, ctype) in EXPECTED {
        for args in [
            &["-u", ALICE][..],
            &["-u", ALICE, "-I"],
            &["-u", ALICE, "-r", "0-9"],
        ] {
            let r = curl(&srv.url(path), args);
            assert!(
                matches!(r.status, 200 | 206),
                "{path} {args:?}: {}",
                r.status
            );
            assert_eq!(
                r.header("content-disposition").as_deref(),
                Some(disposition),
                "{path} {args:?}"
            );
            assert_eq!(
                r.header("content-type").as_deref(),
                Some(ctype),
                "{path} {args:?}"
            );
        }
    }
    // Errors name nothing.
    let r = curl(&srv.url("/d/report"), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-disposition"), None);
    srv.stop();
}

/// The files in `dir`, by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// curl `-OJ` saves each download under the `filename` fallback: the name itself when it is
/// plain ASCII, `_` for what is not.
fn curl_saves_the_ascii_names(driver: Driver) {
    let (data, files) = catalog();
    let srv = data.serve(driver, &[]);
    let dir = data.path().join("curl");
    std::fs::create_dir(&dir).unwrap();
    for (path, _, _) in EXPECTED {
        let st = Command::new("curl")
            .current_dir(&dir)
            .args(["-sS", "--fail", "-O", "-J", "-u", ALICE])
            .arg(srv.url(path))
            .status()
            .unwrap();
        assert!(st.success(), "curl -OJ {path}: {st}");
    }
    srv.stop();
    assert_eq!(
        listing(&dir),
        [
            "02 Song.flac",
            "03 Caf_.flac",
            "Best Of.zip",
            "Bj_rk _ J_ga (live).mkv",
            "Report _Q3_.pdf"
        ]
    );
    for (saved, source) in [
        ("02 Song.flac", "02 Song.flac"),
        ("03 Caf_.flac", "03 Café.flac"),
        ("Bj_rk _ J_ga (live).mkv", "Björk – Jóga (live).mkv"),
        ("Report _Q3_.pdf", "Report \"Q3\".pdf"),
    ] {
        assert_eq!(sha256_file(&dir.join(saved)), sha256_file(&files[source]));
    }
}

/// wget `--content-disposition` reads `filename*`: the exact UTF-8 names, quotes included.
fn wget_saves_the_utf8_names(driver: Driver) {
    assert!(
        have("wget"),
        "wget must be installed (apt-get install wget)"
    );
    let (data, files) = catalog();
    let srv = data.serve(driver, &[]);
    let dir = data.path().join("wget");
    std::fs::create_dir(&dir).unwrap();
    for (path, _, _) in EXPECTED {
        let out = Command::new("wget")
            .current_dir(&dir)
            .args(["-nv", "--content-disposition", "--user", "alice"])
            .args(["--password", "wonderland"])
            .arg(srv.url(path))
            // A UTF-8 terminal, as a user's: in the C locale wget escapes non-ASCII bytes.
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wget {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    srv.stop();
    assert_eq!(
        listing(&dir),
        [
            "02 Song.flac",
            "03 Café.flac",
            "Best Of.zip",
            "Björk – Jóga (live).mkv",
            "Report \"Q3\".pdf"
        ]
    );
    for (name, source) in &files {
        assert_eq!(sha256_file(&dir.join(name)), sha256_file(source), "{name}");
    }
}

on_every_driver!(
    headers_name_every_representation,
    curl_saves_the_ascii_names,
    wget_saves_the_utf8_names
);

/// Drives headless Chromium through the DevTools protocol: starts it on a fresh profile with a
/// DevTools port of the kernel's choice (read from the profile's `DevToolsActivePort`), allows
/// downloads into a directory, opens a tab on the URL and waits for the download to finish.
/// Prints one JSON line: the final state, the file name Chromium suggested, the bytes received.
const CHROMIUM_DOWNLOAD: &str = r##"
import json, os, subprocess, sys, tempfile, time
import websocket

url, dest = sys.argv[1], sys.argv[2]
profile = tempfile.mkdtemp(prefix="weir-chromium-")
proc = subprocess.Popen([
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--user-data-dir=" + profile, "--remote-debugging-port=0", "about:blank",
], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 60
    lines = []
    while len(lines) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("chromium did not open its DevTools port")
        time.sleep(0.05)  # polls for the file Chromium writes once it listens
        if os.path.exists(port_file):
            lines = open(port_file).read().splitlines()
    ws = websocket.create_connection("ws://127.0.0.1:%s%s" % (lines[0], lines[1]), timeout=60)
    events, next_id = [], [0]
    def call(method, params=None, session=None):
        next_id[0] += 1
        msg = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        ws.send(json.dumps(msg))
        while True:
            m = json.loads(ws.recv())
            if m.get("id") == next_id[0]:
                if "error" in m:
                    sys.exit("%s: %s" % (method, m["error"]))
                return m["result"]
            events.append(m)
    call("Browser.setDownloadBehavior",
         {"behavior": "allow", "downloadPath": dest, "eventsEnabled": True})
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Page.navigate", {"url": url}, session)
    suggested = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        while events:
            m = events.pop(0)
            p = m.get("params", {})
            if m.get("method") == "Browser.downloadWillBegin":
                suggested = p["suggestedFilename"]
            if m.get("method") == "Browser.downloadProgress" and p["state"] != "inProgress":
                print(json.dumps({"state": p["state"], "suggested": suggested,
                                  "received": p.get("receivedBytes")}))
                sys.exit(0)
        events.append(json.loads(ws.recv()))
    sys.exit("no download finished within 60 s")
finally:
    proc.terminate()
    proc.wait()
"##;

/// Chromium must be installed; under CI (`CI=true`, where `.ci/run` installs it) a missing one
/// fails. Elsewhere the test says loudly that it did not run.
fn chromium_present() -> bool {
    if have("chromium") {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "chromium is not installed (apt-get install chromium): CI must run the browser test"
    );
    eprintln!(
        "\n{bar}\nSKIPPED names::chromium_saves_the_track_name: chromium is not installed \
         (apt-get install chromium; CI installs it)\n{bar}\n",
        bar = "!".repeat(78)
    );
    false
}

/// Headless Chromium opening a signed link to track 2 of the album saves "02 Song.flac", with
/// the track's exact bytes.
#[test]
fn chromium_saves_the_track_name() {
    if !chromium_present() {
        return;
    }
    let (data, files) = catalog();
    let srv: Server = data.serve(Driver::Uring, &[]);
    let link = data.ok(
        &["token", "--user", "alice", "--item", "best", "--ttl", "600"],
        None,
    );
    let link = link.trim().replacen("/d/best", "/d/best/2", 1);
    let dir = data.path().join("chromium");
    std::fs::create_dir(&dir).unwrap();
    let out = Command::new("python3")
        .args(["-c", CHROMIUM_DOWNLOAD])
        .arg(srv.url(&link))
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "driving chromium failed (websocket-client missing? pip install websocket-client; CI \
         installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\"state\": \"completed\""), "{report}");
    assert!(
        report.contains("\"suggested\": \"02 Song.flac\""),
        "{report}"
    );
    srv.stop();
    assert_eq!(listing(&dir), ["02 Song.flac"]);
    assert_eq!(
        sha256_file(&dir.join("02 Song.flac")),
        sha256_file(&files["02 Song.flac"])
    );
}
