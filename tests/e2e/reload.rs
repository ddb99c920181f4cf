//! SIGHUP with `--config FILE`: the file is read again, its global rate applies to the
//! downloads in flight, which keep going, and its rate classes to new signed links; a broken file is refused with one error line naming the file and
//! the line, and the running configuration stays.

use std::time::{Duration, Instant};

use weir_tests::{curl, sha256_file, DataDir, Driver, Metrics, Server, SlowDownload};

const LEN: usize = 4 << 20;
const GLOBAL: &str = "weir_shaper_global_rate_limit_bytes_per_second";

fn reload_rates_under_a_live_download(driver: Driver) {
    let _alone = weir_tests::exclusive();
    let data = DataDir::new();
    let file = data.alice_with_item("song", LEN, 16);
    let conf = data.path().join("weir.toml");
    let log = data.path().join("weir.log");
    std::fs::write(&conf, "global_rate = \"128KiB\"\ngrace = \"1h\"\n").unwrap();
    let mut args = driver.args().to_vec();
    let conf_arg = conf.to_str().unwrap();
    args.extend_from_slice(&[
        "--config",
        conf_arg,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        "tok",
    ]);
    // The server's stderr (its log) goes to a file the test reads.
    let redirect = format!("exec \"$0\" \"$@\" 2>>'{}'", log.display());
    let srv = Server::start_wrapped(
        &data.path().join("data"),
        &args,
        &[],
        None,
        &["sh", "-c", &redirect],
    );
    driver.check_listen_line(&srv.listen_line);
    let admin = srv.admin_url();
    let limit = || Metrics::fetch(&admin, "tok").value(GLOBAL);
    assert_eq!(limit(), 128 << 10);
    // A signed link naming a class the file does not have yet is refused.
    let link = || {
        let args = [
            "token",
            "--user",
            "alice",
            "--item",
            "song",
            "--rate-class",
            "hd",
        ];
        data.ok(&args, None).trim().to_string()
    };
    let first_bytes = |path: &str| curl(&srv.url(path), &["-r", "0-99"]).status;
    assert_eq!(first_bytes(&link()), 403);

    // At 128 KiB/s the 4 MiB take 32 s; curl itself does not limit.
    let out_dir = data.path();
    let dl = SlowDownload::start(out_dir, &srv.url("/d/song"), "alice:wonderland", "1G");
    dl.wait_for_bytes();
    std::fs::write(
        &conf,
        "global_rate = \"16MiB\"\ngrace = \"1h\"\n[rate_classes]\nhd = \"1MiB\"\n",
    )
    .unwrap();
    let reloaded = Instant::now();
    srv.signal(libc::SIGHUP);
    assert!(
        weir_tests::eventually(Duration::from_secs(10), || limit() == 16 << 20),
        "SIGHUP did not apply the file's global_rate"
    );
    // The new class is honoured.
    assert_eq!(first_bytes(&link()), 206);
    // The same connection finishes at the new rate: well before the old one would allow.
    assert!(dl.finished_ok(), "the download was cut by the reload");
    let took = reloaded.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the download took {took:?} after the reload: still at the old rate?"
    );
    assert_eq!(sha256_file(&out_dir.join("slow.out")), sha256_file(&file));

    // A broken file: refused in one line naming the file and the line; the rate stays.
    std::fs::write(&conf, "grace = \"1h\"\nglobal_rate = \"fast\"\n").unwrap();
    srv.signal(libc::SIGHUP);
    let want = format!("{}:2:", conf.display());
    let refusals = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains(&want))
            .count()
    };
    assert!(
        weir_tests::eventually(Duration::from_secs(10), || refusals() > 0),
        "no error line naming {want} in the log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(refusals(), 1, "one error line per refused reload");
    assert_eq!(limit(), 16 << 20, "a refused file changed the rate");
    assert_eq!(
        first_bytes(&link()),
        206,
        "a refused file dropped the rate class"
    );
    srv.stop();
}

weir_tests::on_every_driver!(reload_rates_under_a_live_download);

/// A receiver on loopback answering every POST with `status`; returns its URL and the
/// Idempotency-Keys it saw.
fn receiver(status: u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (key, _) = weir_tests::read_webhook_post(&stream);
            seen2.lock().unwrap().push(key);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

/// The webhook URL changes on SIGHUP: an event the old receiver refused is retried at the new
/// one, with the same Idempotency-Key.
fn reload_moves_the_webhook(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("song", 100_000, 17);
    let (old, old_seen) = receiver(500);
    let (new, new_seen) = receiver(200);
    let conf = data.path().join("weir.toml");
    std::fs::write(&conf, format!("webhook = \"{old}\"\n")).unwrap();
    let mut args = driver.args().to_vec();
    args.extend_from_slice(&["--config", conf.to_str().unwrap()]);
    let srv = Server::start(&data.path().join("data"), &args, &[]);
    driver.check_listen_line(&srv.listen_line);
    assert_eq!(
        curl(&srv.url("/d/song"), &["-u", "alice:wonderland"]).status,
        200
    );
    assert!(
        weir_tests::eventually(Duration::from_secs(20), || !old_seen
            .lock()
            .unwrap()
            .is_empty()),
        "the completion never reached the first webhook"
    );
    std::fs::write(&conf, format!("webhook = \"{new}\"\n")).unwrap();
    srv.signal(libc::SIGHUP);
    assert!(
        weir_tests::eventually(Duration::from_secs(30), || !new_seen
            .lock()
            .unwrap()
            .is_empty()),
        "the queued event never reached the new webhook"
    );
    let first = old_seen.lock().unwrap()[0].clone();
    assert_eq!(
        new_seen.lock().unwrap()[0],
        first,
        "Idempotency-Key changed"
    );
    srv.stop();
}

weir_tests::on_every_driver!(reload_moves_the_webhook);
