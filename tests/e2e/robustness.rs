//! Bad clients and bad days: slowloris heads, idle keep-alive, a reader that stops, a content
//! file truncated mid-download, running out of descriptors, the connection cap, SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_tests::{
    basic_auth, curl, eventually, get_on_raw_socket, on_every_driver,
    wait_until_receive_buffer_full, DataDir, Driver, Metrics, Server, SlowDownload, ALICE,
};

const TOKEN: &str = "t0ken";

fn setup(size: usize) -> DataDir {
    let data = DataDir::new();
    data.alice_with_item("big", size, 3);
    let small = data.make_file("small.bin", 4096, 4);
    data.add_item_for("small", &small, "alice");
    data
}

/// Read until EOF/reset or `limit`; returns (bytes read, time until the server closed).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (usize, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (total, Some(start.elapsed())),
            Ok(n) => total += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (total, Some(start.elapsed())),
        }
    }
    (total, None)
}

fn timeouts(driver: Driver) {
    let data = setup(32 << 20);
    let srv = data.serve(
        driver,
        &[
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "1s",
            "--send-timeout",
            "1s",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
        ],
    );
    let admin = srv.admin_url();
    let timeouts = || Metrics::fetch(&admin, TOKEN).value("weir_timeouts_total");

    // Slowloris: a head that never completes is cut after the header timeout.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"GET /d/small HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    let closed = closed.expect("slowloris connection was not closed");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");

    // Idle keep-alive: closed after the idle timeout once the response is done.
    let mut s = get_on_raw_socket(srv.addr, "/d/small", &basic_auth(ALICE));
    let (n, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(n > 4096, "got the response first ({n} bytes)");
    assert!(closed.expect("idle connection not closed") < Duration::from_secs(5));
    let before = timeouts();

    // A reader that stops: the send makes no progress and the connection is cut.
    let mut s = get_on_raw_socket(srv.addr, "/d/big", &basic_auth(ALICE));
    // Let the server fill the socket buffers and stall, and its send timeout fire; then drain
    // what was queued: the connection ends there.
    wait_until_receive_buffer_full(&s);
    assert!(
        eventually(Duration::from_secs(10), || timeouts() > before),
        "the stalled send never timed out"
    );
    let (n, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed.is_some(), "stalled download was not cut");
    assert!(
        n < 32 << 20,
        "the whole body arrived ({n} bytes): no stall happened"
    );
    srv.stop();
}

/// A content-store file truncated while it is being sent never crashes the server; its item
/// then answers 503 (GET and HEAD) with one log line for the blob, and serves again once the
/// file is restored with its size and modification time.
fn truncated_mid_download_on(driver: Driver, extra: &[&str]) {
    // More than the socket buffers can hold (up to 32 MiB receive + 4 MiB send here), so the
    // server is still reading the file when it shrinks.
    const SIZE: u64 = 64 << 20;
    let data = setup(SIZE as usize);
    // The server's log (stderr) goes to a file this test reads.
    let log = data.path().join("weir.log");
    let redirect = format!("exec \"$0\" \"$@\" 2>>'{}'", log.display());
    let mut args = driver.args().to_vec();
    args.extend_from_slice(extra);
    let srv = Server::start_wrapped(
        &data.path().join("data"),
        &args,
        &[],
        None,
        &["sh", "-c", &redirect],
    );
    driver.check_listen_line(&srv.listen_line);
    let dl = SlowDownload::start(data.path(), &srv.url("/d/big"), ALICE, "4M");
    dl.wait_for_bytes();
    let store = data.path().join("data").join("store");
    let mut truncated = Vec::new();
    for entry in std::fs::read_dir(&store).unwrap() {
        let p = entry.unwrap().path();
        let meta = std::fs::metadata(&p).unwrap();
        if meta.len() == SIZE {
            let original = std::fs::read(&p).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(1 << 20).unwrap();
            truncated.push((p, original, meta.modified().unwrap()));
        }
    }
    assert_eq!(truncated.len(), 1);
    assert!(
        !dl.finished_ok(),
        "the truncated download cannot have completed"
    );
    let mut srv = srv;
    assert!(srv.alive(), "server died after truncation");
    let r = curl(&srv.url("/d/small"), &["-u", ALICE]);
    assert_eq!(r.status, 200, "server still serves other items");

    // Later requests for the damaged item: 503 with Retry-After, GET and HEAD alike (the
    // state is re-checked at most once a second, so wait for it, bounded).
    let big = srv.url("/d/big");
    assert!(
        eventually(Duration::from_secs(5), || curl(&big, &["-u", ALICE]).status
            == 503),
        "a GET of the truncated item is not 503"
    );
    for _ in 0..20 {
        let r = curl(&big, &["-u", ALICE]);
        assert_eq!(r.status, 503);
        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
        let r = curl(&big, &["-u", ALICE, "-I"]);
        assert_eq!(r.status, 503, "HEAD must not promise the full length");
        assert!(r.header("retry-after").is_some());
    }
    // One line for the blob, not one per request.
    let (path, original, mtime) = &truncated[0];
    let name = path.file_name().unwrap().to_str().unwrap();
    let damaged_lines = |text: &str| {
        text.lines()
            .filter(|l| l.contains(name) && (l.contains("damaged") || l.contains("truncated")))
            .count()
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(damaged_lines(&text), 1, "log:\n{text}");

    // Restore the file as a backup would (content, then its modification time): it serves
    // again, whole and byte-exact.
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(original).unwrap();
    f.set_modified(*mtime).unwrap();
    drop(f);
    assert!(
        eventually(Duration::from_secs(5), || curl(&big, &["-u", ALICE, "-I"])
            .status
            == 200),
        "the restored item is not served again"
    );
    let r = curl(&big, &["-u", ALICE]);
    assert_eq!(r.status, 200);
    assert!(r.body == *original, "restored item is not byte-exact");
    let st = srv.stop();
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(damaged_lines(&text), 1, "log:\n{text}");
}

fn truncated_mid_download(driver: Driver) {
    truncated_mid_download_on(driver, &[]);
}

/// The same with bodies sent by `sendfile(2)`.
fn truncated_mid_download_sendfile(driver: Driver) {
    truncated_mid_download_on(driver, &["--send-path", "sendfile"]);
}

/// CPU seconds (user + system) the process used so far.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Out of descriptors: accepts back off without spinning, and service recovers.
fn emfile(driver: Driver) {
    let _alone = weir_tests::exclusive();
    let data = setup(4096);
    let srv = data.serve_with(driver, &["--workers", "1"], Some(48));
    let held: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(srv.addr).ok())
        .collect();
    assert!(held.len() >= 40);
    let before = cpu_seconds(srv.pid());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = cpu_seconds(srv.pid()) - before;
    assert!(used < 0.5, "server spun at EMFILE: {used:.2} CPU-s in 2 s");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl(&srv.url("/d/small"), &["-u", ALICE, "--max-time", "2"]);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover after EMFILE");
    }
    assert!(srv.stop().success());
}

/// Past the connection cap new connections get 503 + Retry-After.
fn connection_cap_503(driver: Driver) {
    let data = setup(4096);
    let srv = data.serve(driver, &["--workers", "1", "--max-connections", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    // The held connections are accepted once the server answers a probe on one of them.
    let mut first = &held[0];
    write!(
        first,
        "HEAD /d/small HTTP/1.1\r\nHost: x\r\n{}\r\n",
        basic_auth(ALICE)
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let r = curl(&srv.url("/d/small"), &["-u", ALICE]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    drop(held);
    srv.stop();
}

/// SIGTERM: stop accepting, cut in-flight downloads after the drain deadline, exit 0.
fn drain(driver: Driver) {
    // More than the socket buffers can hold, so it cannot all be sent before the drain ends.
    let data = setup(64 << 20);
    let mut srv = data.serve(driver, &["--drain-timeout", "1s"]);
    let dl = SlowDownload::start(data.path(), &srv.url("/d/big"), ALICE, "2M");
    dl.wait_for_bytes();
    let addr = srv.addr;
    srv.signal(libc::SIGTERM);
    let st = srv
        .wait_timeout(Duration::from_secs(15))
        .expect("did not exit after SIGTERM + drain timeout");
    assert!(st.success(), "exit status {st}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after drain"
    );
    assert!(
        !dl.finished_ok(),
        "a 64 MiB download at 2 MB/s cannot have finished in a 1 s drain"
    );
}

/// io_uring refused (as under Docker's default seccomp profile): `--driver auto` falls back to
/// epoll and serves; `--driver uring` refuses to start with a clear error.
#[test]
fn io_uring_refused_falls_back_to_epoll() {
    // libseccomp's Python binding from Debian (python3-seccomp), not the pyenv interpreter.
    const PY: &str = "/usr/bin/python3";
    let filter = "import errno, os, sys, seccomp\n\
                  f = seccomp.SyscallFilter(seccomp.ALLOW)\n\
                  f.add_rule(seccomp.ERRNO(errno.EPERM), 'io_uring_setup')\n\
                  f.load()\n\
                  os.execv(sys.argv[1], sys.argv[1:])\n";
    let ok = Command::new(PY)
        .args(["-c", "import seccomp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3-seccomp is needed (apt-get install python3-seccomp)"
    );
    let data = setup(4096);
    let srv = Server::start_wrapped(
        &data.path().join("data"),
        &["--driver", "auto"],
        &[],
        None,
        &[PY, "-c", filter],
    );
    assert!(
        srv.listen_line.contains("(epoll"),
        "expected the epoll driver: {}",
        srv.listen_line
    );
    let r = curl(&srv.url("/d/small"), &["-u", ALICE]);
    assert_eq!(r.status, 200);
    assert!(srv.stop().success());

    // Forcing io_uring where it is refused is an error, not a silent fallback.
    let out = Command::new(PY)
        .args(["-c", filter])
        .arg(weir_tests::bin("weir"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--driver",
            "uring",
            "--data-dir",
        ])
        .arg(data.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring"), "stderr: {err}");
}

on_every_driver!(
    timeouts,
    truncated_mid_download,
    truncated_mid_download_sendfile,
    emfile,
    connection_cap_503,
    drain,
);
