//! What an operator meets: the access log (fields, bytes acknowledged, reopened after a
//! logrotate-style rename on SIGUSR1), JSON log lines, `GET /health` and `GET /ready` (503 while
//! draining), `GET /downloads` showing a live shaped download, `DELETE
//! /users/{name}/connections` cutting it, and `/metrics` read by Prometheus' own parser.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weir_tests::{curl, eventually, on_every_driver, DataDir, Driver, Metrics, Server, ALICE};

const TOKEN: &str = "admin-secret-for-tests";

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A text access log line: its time and its `key=value` fields.
fn fields(line: &str) -> (String, HashMap<String, String>) {
    let mut words = line.split_whitespace();
    let time = words.next().unwrap_or("").to_string();
    let map = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (time, map)
}

fn driver_name(driver: Driver) -> &'static str {
    match driver {
        Driver::Uring | Driver::UringMinimal => "io_uring",
        Driver::Epoll => "epoll",
    }
}

fn admin_get(admin: &str, path: &str, token: bool) -> (u16, serde_json::Value) {
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let args: Vec<&str> = if token { vec!["-H", &bearer] } else { vec![] };
    let r = curl(&format!("{admin}{path}"), &args);
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{path}: status {}, curl exit {}, not JSON ({e}): {:?}",
            r.status,
            r.exit,
            String::from_utf8_lossy(&r.body)
        )
    });
    (r.status, v)
}

fn admin_call(admin: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let mut args = vec!["-H", &bearer, "-X", method];
    if let Some(b) = body {
        args.extend(["-d", b]);
    }
    let r = curl(&format!("{admin}{path}"), &args);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// One line per response with every field, bytes acknowledged equal to bytes sent for clients
/// that read everything; after a rename and SIGUSR1 the lines go to a new file of the old name.
fn access_log(driver: Driver) {
    let data = DataDir::new();
    let file = data.alice_with_item("song", 300_000, 7);
    let log = data.path().join("access.log");
    let admin_flags = ["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    let mut flags = vec!["--access-log", log.to_str().unwrap()];
    flags.extend(admin_flags);
    let srv = data.serve(driver, &flags);

    let full = curl(&srv.url("/d/song"), &["-u", ALICE]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, std::fs::read(&file).unwrap());
    let ranged = curl(&srv.url("/d/song"), &["-u", ALICE, "-r", "0-99"]);
    assert_eq!(ranged.status, 206);
    // Each curl closed its connection: both lines are written.
    assert!(
        eventually(Duration::from_secs(10), || lines(&log).len() == 2),
        "two access log lines expected, got {:?}",
        lines(&log)
    );
    let got = lines(&log);
    let (time, f) = fields(&got[0]);
    assert!(time.starts_with("20") && time.ends_with('Z'), "time {time}");
    assert_eq!(f["user"], "alice");
    assert_eq!(f["item"], "song");
    assert_eq!(f["part"], "0");
    assert_eq!(f["range"], "-");
    assert_eq!(f["status"], "200");
    assert_eq!(f["client"], "127.0.0.1");
    assert_eq!(f["driver"], driver_name(driver));
    let sent: u64 = f["bytes_sent"].parse().unwrap();
    assert!(sent > 300_000, "head and body: {sent}");
    assert_eq!(f["bytes_acked"], f["bytes_sent"], "curl read all of it");
    assert!(f["duration_ms"].parse::<f64>().unwrap() >= 0.0);
    let (_, f) = fields(&got[1]);
    assert_eq!(f["status"], "206");
    assert_eq!(f["range"], "\"bytes=0-99\"");
    let sent: u64 = f["bytes_sent"].parse().unwrap();
    assert!(
        sent > 100 && sent < 1000,
        "100 body bytes and a head: {sent}"
    );
    assert_eq!(f["bytes_acked"], f["bytes_sent"]);

    // logrotate: rename, SIGUSR1, and the next line goes to a new file of the same name.
    let rotated = data.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    srv.signal(libc::SIGUSR1);
    assert!(
        eventually(Duration::from_secs(10), || log.exists()),
        "SIGUSR1 did not reopen the access log"
    );
    assert_eq!(curl(&srv.url("/d/song"), &[]).status, 401);
    assert!(
        eventually(Duration::from_secs(10), || lines(&log).len() == 1),
        "the line after the reopen: {:?}",
        lines(&log)
    );
    let (_, f) = fields(&lines(&log)[0]);
    assert_eq!((f["status"].as_str(), f["user"].as_str()), ("401", "-"));
    assert_eq!(lines(&rotated).len(), 2, "the rotated file keeps its lines");

    let m = Metrics::fetch(&srv.admin_url(), TOKEN);
    assert_eq!(m.value("weir_access_log_lines_total"), 3);
    assert_eq!(m.value("weir_access_log_dropped_total"), 0);
    assert!(m.value("weir_bytes_acknowledged_total") > 300_100);
    srv.stop();
}

/// `--log-format json`: every log line on stderr and every access log line is a JSON object.
fn json_logs(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("song", 20_000, 3);
    let log = data.path().join("access.json");
    let stderr = data.path().join("stderr.log");
    let mut args = driver.args().to_vec();
    args.extend([
        "--log-format",
        "json",
        "--access-log",
        log.to_str().unwrap(),
    ]);
    let env = [("WEIR_TEST_STDERR", stderr.to_str().unwrap())];
    // The harness sets WEIR_LOG=warn; the wrapper asks for the info lines.
    let wrapper = [
        "sh",
        "-c",
        "WEIR_LOG=info exec \"$0\" \"$@\" 2>\"$WEIR_TEST_STDERR\"",
    ];
    let srv = Server::start_wrapped(&data.path().join("data"), &args, &env, None, &wrapper);
    driver.check_listen_line(&srv.listen_line);
    assert_eq!(curl(&srv.url("/d/song"), &["-u", ALICE]).status, 200);
    assert!(eventually(Duration::from_secs(10), || lines(&log).len() == 1));
    let v: serde_json::Value = serde_json::from_str(&lines(&log)[0]).expect("a JSON access line");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["item"], "song");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_acked"], v["bytes_sent"]);
    assert_eq!(v["driver"], driver_name(driver));
    assert!(srv.stop().success());
    let logged = lines(&stderr);
    assert!(
        logged.len() >= 3,
        "start, drain and exit are logged: {logged:?}"
    );
    for line in &logged {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Health and readiness, a live shaped download in `GET /downloads`, cut by `DELETE
/// /users/alice/connections`; readiness turns 503 while draining, liveness stays 200.
fn health_downloads_cut(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("big", 4_000_000, 11);
    let admin_flags = ["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    let mut srv = data.serve(driver, &admin_flags);
    let admin = srv.admin_url();

    let (status, v) = admin_get(&admin, "/health", false);
    assert_eq!((status, v["status"].as_str()), (200, Some("live")));
    let (status, v) = admin_get(&admin, "/ready", false);
    assert_eq!((status, v["ready"].as_bool()), (200, Some(true)));
    let (status, v) = admin_get(&admin, "/openapi.json", false);
    assert_eq!(status, 200);
    assert!(v["paths"]["/downloads"]["get"].is_object());
    assert_eq!(admin_get(&admin, "/downloads", false).0, 401);

    // 256 KiB/s: the 4 MB download lasts about 15 s unless it is cut.
    let rate = 256 * 1024;
    let (status, _) = admin_call(
        &admin,
        "PUT",
        "/users/alice/rate",
        Some("{\"rate\":\"256KiB\"}"),
    );
    assert_eq!(status, 200);
    let dir1 = tempfile::tempdir().unwrap();
    let dl = weir_tests::SlowDownload::start(dir1.path(), &srv.url("/d/big"), ALICE, "100M");
    dl.wait_for_bytes();
    // Past the first seconds (the shaper's burst), the published rate is the shaped one.
    let mut entry = serde_json::Value::Null;
    let listed = eventually(Duration::from_secs(15), || {
        let (_, v) = admin_get(&admin, "/downloads", true);
        entry = v["downloads"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|d| d["user"] == "alice" && d["item"] == "big")
            })
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        entry["age_seconds"].as_f64().is_some_and(|a| a >= 3.0)
            && entry["rate_bytes_per_second"].is_u64()
    });
    assert!(listed, "the live download in /downloads: {entry}");
    assert_eq!(entry["connections"], 1);
    assert!(entry["sent_bytes"].as_u64().unwrap() > 0);
    // Delivered: what the client's TCP acknowledged, credited by the sweep's poll (a few
    // seconds into a 256 KiB/s download, and never more than was sent).
    let delivered = entry["delivered_bytes"].as_u64().unwrap();
    assert!(
        delivered > 0 && delivered <= entry["sent_bytes"].as_u64().unwrap(),
        "delivered {delivered} of {entry}"
    );
    let now = entry["rate_bytes_per_second"].as_u64().unwrap();
    assert!(
        now > 0 && now <= 2 * rate,
        "current rate {now} at a 256 KiB/s cap"
    );

    let (status, body) = admin_call(&admin, "DELETE", "/users/alice/connections", None);
    assert_eq!(status, 202, "{body}");
    assert!(!dl.finished_ok(), "the cut download must end incomplete");
    let gone = eventually(Duration::from_secs(5), || {
        let (_, v) = admin_get(&admin, "/downloads", true);
        v["downloads"].as_array().is_some_and(|l| l.is_empty())
    });
    assert!(gone, "/downloads still lists the cut download");
    let (status, _) = admin_call(&admin, "DELETE", "/users/nobody/connections", None);
    assert_eq!(status, 404);

    // Draining with a download in flight: not ready (503, with the reason), still live.
    let dir2 = tempfile::tempdir().unwrap();
    let dl = weir_tests::SlowDownload::start(dir2.path(), &srv.url("/d/big"), ALICE, "100M");
    dl.wait_for_bytes();
    assert_eq!(admin_call(&admin, "POST", "/drain", None).0, 202);
    let (status, v) = admin_get(&admin, "/ready", false);
    assert_eq!(status, 503);
    assert_eq!(v["reason"], "draining");
    assert_eq!(admin_get(&admin, "/health", false).0, 200);
    dl.kill();
    let st = srv
        .wait_timeout(Duration::from_secs(15))
        .expect("no exit after the drain");
    assert!(st.success());
}

/// `/metrics` as Prometheus reads it: `prometheus_client`'s parser accepts the whole text and
/// finds every family an operator needs.
fn metrics_parse(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("song", 100_000, 5);
    let admin_flags = ["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    let mut flags = admin_flags.to_vec();
    flags.extend(["--rate-class", "hd=4MiB"]);
    let srv = data.serve(driver, &flags);
    let admin = srv.admin_url();
    assert_eq!(curl(&srv.url("/d/song"), &["-u", ALICE]).status, 200);
    // The purchase completes once the ledger applied the credits.
    let completed = eventually(Duration::from_secs(10), || {
        Metrics::fetch(&admin, TOKEN).get("weir_completions_total") == Some(1)
    });
    assert!(completed, "no completion counted");

    let text = Metrics::fetch(&admin, TOKEN).0;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    const PARSE: &str = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        fams = {f.name: {'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
                for f in parse(open(sys.argv[1]).read())}\n\
        print(json.dumps(fams))\n";
    let out = Command::new("python3")
        .args(["-c", PARSE])
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics (install it: pip install prometheus-client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fams: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let family = |name: &str, kind: &str| -> Vec<serde_json::Value> {
        let f = &fams[name];
        assert_eq!(f["type"], kind, "family {name} in\n{text}");
        f["samples"].as_array().unwrap().clone()
    };
    let value = |name: &str, kind: &str| -> f64 { family(name, kind)[0][2].as_f64().unwrap() };
    assert_eq!(value("weir_completions", "counter"), 1.0);
    assert!(value("weir_bytes_acknowledged", "counter") >= 100_000.0);
    assert_eq!(value("weir_webhook_queue_depth", "gauge"), 0.0);
    family("weir_webhook_retries", "counter");
    family("weir_webhook_failures", "counter");
    family("weir_shaper_backlog_connections", "gauge");
    family("weir_shaper_granted_rate_bytes_per_second", "gauge");
    family("weir_shaper_granted_bytes", "counter");
    family("weir_shaper_global_backlog_connections", "gauge");
    family("weir_shaper_global_granted_rate_bytes_per_second", "gauge");
    family("weir_auth_queue_depth", "gauge");
    let auth = family("weir_auth_wait_seconds", "histogram");
    let count = auth.iter().find(|s| s[0] == "weir_auth_wait_seconds_count");
    assert!(
        count.unwrap()[2].as_f64().unwrap() >= 1.0,
        "alice's first request waited"
    );
    let loops = family("weir_worker_loop_seconds", "histogram");
    assert!(loops
        .iter()
        .any(|s| s[1]["worker"] == "0" && s[1]["le"] == "+Inf"));
    let info = family("weir_driver_info", "gauge");
    assert_eq!(info[0][1]["driver"], driver_name(driver));
    if driver == Driver::UringMinimal {
        assert_eq!(info[0][1]["level"], "minimal");
    }
    let build = family("weir_build_info", "gauge");
    assert!(build[0][1]["version"].is_string());
    srv.stop();
}

on_every_driver!(access_log, json_logs, health_downloads_cut, metrics_parse);
