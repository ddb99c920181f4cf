//! A deliberately flaky server: of the ranged requests, some are cut mid-body (the connection
//! closes) and some stall mid-body (the socket stays open, silent). forty must still assemble the
//! exact bytes by reconnecting and resuming, and count each failure under its own kind.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Longest a stalled response holds its connection (the test's own bound).
const STALL_MAX: Duration = Duration::from_secs(8);

struct Flaky {
    port: u16,
    stop: Arc<AtomicBool>,
    ranged: Arc<AtomicU64>,
}

impl Flaky {
    fn start(data: Arc<Vec<u8>>) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ranged = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), ranged.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (data, s, r) = (data.clone(), s.clone(), r.clone());
                        std::thread::spawn(move || serve(conn, &data, &s, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Flaky { port, stop, ranged }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, data: &[u8], stop: &AtomicBool, ranged: &AtomicU64) {
    conn.set_nodelay(true).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let Some(range) = read_request_range(&mut reader, data.len() as u64) else {
            return;
        };
        let Some((a, b)) = range else {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
            if out.write_all(head.as_bytes()).is_err() || out.write_all(data).is_err() {
                return;
            }
            continue;
        };
        let n = ranged.fetch_add(1, Ordering::Relaxed);
        let Some(body) = write_partial_head(&mut out, data, (a, b)) else {
            return;
        };
        let half = &body[..body.len() / 2];
        match n % 5 {
            // Cut: half the body, then close.
            1 => {
                let _ = out.write_all(half);
                return;
            }
            // Stall: half the body, then silence on an open socket.
            3 => {
                let _ = out.write_all(half);
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < STALL_MAX {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            _ => {
                if out.write_all(body).is_err() {
                    return;
                }
            }
        }
    }
}

#[test]
fn cut_and_stalled_ranges_are_resumed_into_the_exact_bytes() {
    let data = Arc::new(content(6 << 20, 5));
    let sha = sha256_hex(&data);
    let server = Flaky::start(data.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flaky");
    let t0 = Instant::now();
    let run = Forty {
        users: 2,
        connections: 6,
        duration: "5s",
        sha256: &sha,
    };
    let url = format!("http://127.0.0.1:{}/file", server.port);
    run.run(&url, &out, &["--stall-timeout", "300ms"]);
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "the run ends by itself"
    );
    let s = assert_result_dir(&out);
    let done = s["downloads_completed"].as_u64().unwrap();
    assert!(done >= 1, "downloads completed despite the server: {s:#}");
    assert_eq!(s["downloads_verified"].as_u64().unwrap(), done, "{s:#}");
    assert_eq!(s["hash_mismatches"], 0);
    let errors = &s["errors"];
    assert!(
        errors["body_short"].as_u64().unwrap_or(0) >= 1,
        "cuts counted: {errors}"
    );
    assert!(
        errors["stall"].as_u64().unwrap_or(0) >= 1,
        "stalls counted: {errors}"
    );
    assert!(server.ranged.load(Ordering::Relaxed) > 10);
    // Stalls were cut at the stall timeout, so stall gaps stay near it, not at STALL_MAX.
    assert!(s["histograms"]["stall_gap"]["max"].as_u64().unwrap() < 2_000_000);
}
