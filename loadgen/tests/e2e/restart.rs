//! A server that dies and comes back on the same address: forty reconnects with back-off and
//! resumes every range from the bytes it holds (the server remembers nothing), `--events`
//! records each finished download and `--gate` holds the next one; and `--retry-for` gives a
//! download up when nobody comes back.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_load::downloads::{DownloadLog, Gate};

use crate::common::*;

/// One life of the server: serves ranges slowly (16 KiB every 10 ms per connection) until
/// `dead`, then every connection is reset and the listener closed, as a SIGKILL would.
/// Body bytes served, over both lives.
static SENT: AtomicU64 = AtomicU64::new(0);

fn life(addr: SocketAddr, data: Arc<Vec<u8>>, dead: Arc<AtomicBool>, starts: Arc<Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    while !dead.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (data, dead, starts) = (data.clone(), dead.clone(), starts.clone());
                std::thread::spawn(move || serve(conn, &data, &dead, &starts));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve(conn: TcpStream, data: &[u8], dead: &AtomicBool, starts: &Mutex<Vec<u64>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let Some(range) = read_request_range(&mut reader, data.len() as u64) else {
            return;
        };
        let (a, b) = range.expect("forty always asks for a range");
        starts.lock().unwrap().push(a);
        let Some(body) = write_partial_head(&mut out, data, (a, b)) else {
            return;
        };
        for chunk in body.chunks(16 << 10) {
            if dead.load(Ordering::Relaxed) {
                // SIGKILL: the kernel resets what the process held.
                let _ = socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO));
                return;
            }
            if out.write_all(chunk).is_err() {
                return;
            }
            SENT.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn ranges_resume_from_held_bytes_across_a_server_restart() {
    let data = Arc::new(content(8 << 20, 9));
    let sha = sha256_hex(&data);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    std::fs::write(&reference, &*data).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let gate_dir = dir.path().join("gate");
    std::fs::create_dir(&gate_dir).unwrap();
    let gate = Gate::new(&gate_dir);
    gate.open(0, 0).unwrap();
    gate.open(1, 0).unwrap();
    let dead = Arc::new(AtomicBool::new(false));
    let first = {
        let (d, dead, s) = (data.clone(), dead.clone(), starts.clone());
        std::thread::spawn(move || life(addr, d, dead, s))
    };
    // The server dies mid-download, once 4 of the 16 MiB went out (each user's 8 MiB comes over
    // 4 connections at about 1.6 MB/s each), is gone 500 ms and comes back on the same address.
    let restart = {
        let (d, s) = (data.clone(), starts.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while SENT.load(Ordering::Relaxed) < 4 << 20 && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(2));
            }
            dead.store(true, Ordering::Relaxed);
            first.join().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            life(addr, d, Arc::new(AtomicBool::new(false)), s);
        })
    };
    let _ = restart;
    let events = dir.path().join("events.jsonl");
    let out = dir.path().join("run");
    let run = Forty {
        users: 2,
        connections: 4,
        duration: "5s",
        sha256: &sha,
    };
    let t0 = Instant::now();
    run.run(
        &format!("http://{addr}/file"),
        &out,
        &[
            "--reference-file",
            reference.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--gate",
            gate_dir.to_str().unwrap(),
            "--retry-for",
            "30s",
        ],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the run ends by itself"
    );
    let records = DownloadLog::read(&events).unwrap();
    let mut got: Vec<(usize, u64, Option<bool>)> = records
        .iter()
        .map(|r| (r.user, r.download, r.verified))
        .collect();
    got.sort();
    // Each user finished its one gated download, with the exact bytes, and started no other.
    assert_eq!(
        got,
        vec![(0, 0, Some(true)), (1, 0, Some(true))],
        "{records:?}"
    );
    let s = assert_result_dir(&out);
    assert_eq!(s["downloads_verified"], 2, "{s:#}");
    assert!(
        s["errors"]["connect_refused"].as_u64().unwrap_or(0) >= 1
            || s["errors"]["reset"].as_u64().unwrap_or(0) >= 1,
        "the restart was seen: {s:#}"
    );
    // Resumed ranges start where the client's bytes end: the second life sends only what is
    // missing. Starting ranges over would send the 4 MiB served before the kill again; the
    // slack covers bytes in flight at the reset and the tails of re-split ranges.
    let sent = SENT.load(Ordering::Relaxed);
    assert!(
        sent < 2 * (8 << 20) + (2 << 20),
        "{sent} bytes served for 16 MiB of downloads; requests started at {:?}",
        starts.lock().unwrap()
    );
}

#[test]
fn retry_for_gives_a_download_up_when_nobody_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let data = content(1 << 20, 3);
    std::fs::write(&reference, &data).unwrap();
    let out = dir.path().join("run");
    let url = format!("http://127.0.0.1:{}/file", free_port());
    let t0 = Instant::now();
    Forty {
        users: 3,
        connections: 2,
        duration: "6s",
        sha256: &sha256_hex(&data),
    }
    .run(
        &url,
        &out,
        &[
            "--reference-file",
            reference.to_str().unwrap(),
            "--retry-for",
            "1s",
        ],
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // (Not assert_result_dir: no byte moved, so the interval logs are empty.)
    let s = summary(&out);
    assert_eq!(s["errors"]["gave_up"], 3, "one per user: {s:#}");
    assert!(
        s["errors"]["connect_refused"].as_u64().unwrap() >= 3,
        "{s:#}"
    );
    assert_eq!(
        s["downloads_incomplete"], 0,
        "given up is not in flight: {s:#}"
    );
}
