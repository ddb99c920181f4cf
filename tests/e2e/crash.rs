//! Crashes: after a SIGKILL of weir at any moment of a download, a client that resumes from
//! what *it* holds (curl `-C -`, wget `-c`, aria2c `-c` with its `.aria2` control file, axel
//! with its `.st` state file) gets the item completed exactly once; a download that is never
//! resumed never completes; an empty item completes once.
//!
//! Nothing here tells a client where to resume: each one is run again the way a user would run
//! it, and picks its offset from its own files. weir's side of it: the credits each worker had
//! counted survive in its map file, and what it had written but not seen acknowledged becomes
//! evidence that a resume inside it proves (see `engine/src/completion/inflight.rs`).
//!
//! Downloading is slow (rate-limited so the kill lands mid-download), so each client runs on
//! one driver level, named in its test: `curl_on_uring`, `wget_on_uring_minimal`,
//! `aria2c_on_epoll`, `axel_on_epoll`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_tests::{
    curl, eventually, have, on_every_driver, sha256_file, DataDir, Driver, Server, ALICE,
};

/// Size of the item: large enough that a 4 MB/s download is mid-way when weir is killed.
const SIZE: usize = 24 << 20;

/// `weir cart list alice --json`: alice's (item, delivered bytes).
fn cart(data: &DataDir) -> Vec<(String, u64)> {
    data.ok(&["cart", "list", "alice", "--json"], None)
        .lines()
        .filter_map(|l| {
            let item = field(l, "item")?;
            let delivered = field(l, "delivered_bytes").and_then(|v| v.parse().ok());
            Some((item, delivered.unwrap_or(0)))
        })
        .collect()
}

/// `weir history alice --json`: the items alice completed, once per completion.
fn history(data: &DataDir) -> Vec<String> {
    data.ok(&["history", "alice", "--json"], None)
        .lines()
        .filter_map(|l| field(l, "item"))
        .collect()
}

/// A top-level field of a one-line JSON object, as text (strings unquoted).
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let rest = line[line.find(&key)? + key.len()..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Wait until the journal shows the download under way.
fn under_way(data: &DataDir, bytes: u64) {
    assert!(
        eventually(Duration::from_secs(30), || cart(data)
            .first()
            .is_some_and(|c| c.1 >= bytes)),
        "the download never got under way: cart {:?}",
        cart(data)
    );
}

/// A webhook receiver answering 200; returns its URL and the Idempotency-Keys it received.
fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = keys.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (key, _body) = weir_tests::read_webhook_post(&stream);
            seen.lock().unwrap().push(key);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, keys)
}

/// The resuming clients.
#[derive(Clone, Copy, Debug)]
enum Client {
    Curl,
    Wget,
    Aria2c,
    Axel,
}

impl Client {
    fn package(self) -> &'static str {
        match self {
            Client::Curl => "curl",
            Client::Wget => "wget",
            Client::Aria2c => "aria2c",
            Client::Axel => "axel",
        }
    }

    /// The client's command downloading `/d/movie` from `srv` into `dir/movie`: the first run
    /// limited to 4 MB/s, or (`resume`) run again the way its user resumes it.
    fn command(self, srv: &Server, dir: &Path, resume: bool) -> Command {
        let out = dir.join("movie");
        let url = srv.url("/d/movie");
        let mut cmd;
        match self {
            Client::Curl => {
                cmd = Command::new("curl");
                // No `-f`: a resume of a file already whole gets 416, which plain curl accepts
                // as "nothing left to fetch" (and which proves the client holds every byte).
                cmd.args(["-s", "-u", ALICE, "-o"]).arg(&out);
                if resume {
                    cmd.args(["-C", "-"]);
                } else {
                    cmd.args(["--limit-rate", "4M"]);
                }
                cmd.arg(url);
            }
            Client::Wget => {
                cmd = Command::new("wget");
                cmd.args(["-q", "--tries=1", "--user=alice", "--password=wonderland"]);
                cmd.arg("-P").arg(dir);
                if resume {
                    cmd.arg("-c");
                } else {
                    cmd.arg("--limit-rate=4m");
                }
                cmd.arg(url);
            }
            Client::Aria2c => {
                cmd = Command::new("aria2c");
                cmd.args([
                    "-q",
                    "-x1",
                    "-s1",
                    "--max-tries=1",
                    "--file-allocation=none",
                    "--http-user=alice",
                    "--http-passwd=wonderland",
                    "-o",
                    "movie",
                ]);
                cmd.arg("-d").arg(dir);
                if resume {
                    cmd.arg("-c");
                } else {
                    cmd.arg("--max-download-limit=4M");
                }
                cmd.arg(url);
            }
            Client::Axel => {
                cmd = Command::new("axel");
                cmd.args(["-q", "-n", "1"]);
                if !resume {
                    cmd.args(["-s", "4000000"]);
                }
                cmd.arg("-o").arg(&out);
                cmd.arg(format!("http://{ALICE}@{}/d/movie", srv.addr));
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }
}

/// A client process, killed if the test fails.
struct Running(Child);

impl Running {
    /// Wait for the client to give up by itself (its server died); a client that keeps
    /// retrying is interrupted as its user would (Ctrl-C: SIGINT, on which aria2c and axel save
    /// their control and state files).
    fn end(mut self) {
        let gave_up = eventually(Duration::from_secs(15), || {
            self.0.try_wait().ok().flatten().is_some()
        });
        if !gave_up {
            // SAFETY: kill(2) of the child this test spawned and has not reaped.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGINT);
            }
            let _ = self.0.wait();
        }
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for the client")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The item, alice, and a directory for the client's files.
fn fixture() -> (DataDir, PathBuf, PathBuf) {
    let data = DataDir::new();
    let file = data.alice_with_item("movie", SIZE, 14);
    let dir = data.path().join("client");
    std::fs::create_dir_all(&dir).unwrap();
    (data, file, dir)
}

/// SIGKILL of weir mid-download; restart on the same data directory; the client resumes by
/// itself and ends byte-exact; the item completes exactly once (also after another restart),
/// and the shop's webhook hears of it once (one idempotency key).
fn killed_mid_download_then_resumed(driver: Driver, client: Client) {
    assert!(
        have(client.package()),
        "{} must be installed",
        client.package()
    );
    let (data, file, dir) = fixture();
    let (hook, keys) = webhook();
    let flags = ["--webhook", hook.as_str()];
    let srv = data.serve(driver, &flags);
    let first = Running(
        client
            .command(&srv, &dir, false)
            .spawn()
            .expect("run client"),
    );
    under_way(&data, 4 << 20);
    srv.signal(libc::SIGKILL);
    drop(srv);
    first.end();
    assert!(
        history(&data).is_empty(),
        "completed before the client had every byte"
    );

    let srv = data.serve(driver, &flags);
    let st = Running(
        client
            .command(&srv, &dir, true)
            .spawn()
            .expect("run client"),
    )
    .wait();
    assert!(st.success(), "{client:?} failed to resume: {st}");
    assert_eq!(
        sha256_file(&dir.join("movie")),
        sha256_file(&file),
        "{client:?} resumed to a different file"
    );
    completes_once(&data, srv, driver, &flags, &keys, &format!("{client:?}"));
}

/// The client holds every byte: the item completes (its cart row goes, the webhook hears of it)
/// and stays completed once across another restart, with one idempotency key.
fn completes_once(
    data: &DataDir,
    srv: Server,
    driver: Driver,
    flags: &[&str],
    keys: &Mutex<Vec<String>>,
    client: &str,
) {
    assert!(
        eventually(Duration::from_secs(15), || history(data) == ["movie"]),
        "{client} holds every byte but the item did not complete: cart {:?}, history {:?}",
        cart(data),
        history(data)
    );
    assert!(cart(data).is_empty());
    assert!(
        eventually(Duration::from_secs(15), || !keys.lock().unwrap().is_empty()),
        "the webhook never heard of the completion"
    );
    srv.stop();
    let srv = data.serve(driver, flags);
    srv.stop();
    assert_eq!(history(data), ["movie"], "completed more than once");
    let mut keys = keys.lock().unwrap().clone();
    keys.dedup();
    assert_eq!(
        keys.len(),
        1,
        "one completion event, one idempotency key: {keys:?}"
    );
}

#[test]
fn curl_on_uring() {
    killed_mid_download_then_resumed(Driver::Uring, Client::Curl);
}

#[test]
fn wget_on_uring_minimal() {
    killed_mid_download_then_resumed(Driver::UringMinimal, Client::Wget);
}

#[test]
fn aria2c_on_epoll() {
    killed_mid_download_then_resumed(Driver::Epoll, Client::Aria2c);
}

#[test]
fn axel_on_epoll() {
    killed_mid_download_then_resumed(Driver::Epoll, Client::Axel);
}

/// A download cut by a SIGKILL and never resumed never completes, across the restart and the
/// replay of what weir had counted (which survives: the progress does not go back).
fn killed_and_never_resumed_never_completes(driver: Driver) {
    let (data, _, dir) = fixture();
    let srv = data.serve(driver, &[]);
    let first = Running(
        Client::Curl
            .command(&srv, &dir, false)
            .spawn()
            .expect("run curl"),
    );
    under_way(&data, 4 << 20);
    srv.signal(libc::SIGKILL);
    drop(srv);
    first.end();
    let before = cart(&data)[0].1;
    let srv = data.serve(driver, &[]);
    // Another request of the same user, from the start and cut short, proves nothing more.
    let r = curl(&srv.url("/d/movie"), &["-u", ALICE, "-r", "0-999"]);
    assert_eq!(r.status, 206);
    srv.stop();
    let srv = data.serve(driver, &[]);
    srv.stop();
    let after = cart(&data);
    assert_eq!(after.len(), 1, "the item left the cart: {after:?}");
    assert!(
        after[0].1 >= before,
        "credits lost: {before} -> {}",
        after[0].1
    );
    assert!(after[0].1 < SIZE as u64);
    assert!(
        history(&data).is_empty(),
        "a download never resumed completed"
    );
}

/// An empty item: a GET answers 200 with no body; once the client's TCP acknowledged the head,
/// it completes, exactly once.
fn empty_item_completes_once(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("movie", 0, 1);
    let srv = data.serve(driver, &[]);
    let r = curl(&srv.url("/d/movie"), &["-u", ALICE]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["movie"]),
        "the empty item never completed: cart {:?}",
        cart(&data)
    );
    // Fetched again in the grace period: still once.
    assert_eq!(curl(&srv.url("/d/movie"), &["-u", ALICE]).status, 200);
    srv.stop();
    let srv = data.serve(driver, &[]);
    srv.stop();
    assert_eq!(history(&data), ["movie"], "completed more than once");
}

#[test]
fn killed_and_never_resumed_never_completes_on_epoll() {
    killed_and_never_resumed_never_completes(Driver::Epoll);
}

on_every_driver!(empty_item_completes_once);

/// Size of the item whose tail the kernel delivers after the kill, and how much of it the client
/// has saved when weir is killed: the rest (96 KiB) fits in the client's receive buffer alone,
/// so weir has handed all of it to the kernel however small the send buffer it gave this slow
/// reader. (Bytes of a send still under way when weir is killed can be lost: see the README's
/// "Still lost".)
const TAIL_SIZE: usize = 256 << 10;
const TAIL_SAVED: u64 = 160 << 10;

/// weir is killed while wget, reading slowly, still has most of the item to read: the kernel
/// goes on delivering what weir had written (the killed process's sockets close gracefully),
/// wget finishes normally and never asks again. weir, restarted, learns from the kernel how far
/// its dead sockets were acknowledged (`sock_diag`), so the item completes, once, with no
/// further request from the client.
fn a_tail_delivered_after_the_kill_completes_without_a_request(driver: Driver) {
    let data = DataDir::new();
    let file = data.alice_with_item("movie", TAIL_SIZE, 15);
    let dir = data.path().join("client");
    std::fs::create_dir_all(&dir).unwrap();
    let (hook, keys) = webhook();
    let flags = ["--webhook", hook.as_str()];
    let srv = data.serve(driver, &flags);
    let out = dir.join("movie");
    // wget paces its reads (curl's --limit-rate reads a small item in one burst).
    let client = Running(
        Command::new("wget")
            .args(["-q", "--tries=1", "--user=alice", "--password=wonderland"])
            .args(["--limit-rate=100k", "-O"])
            .arg(&out)
            .arg(srv.url("/d/movie"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run wget"),
    );
    // Killed once wget has saved most of it (what its user sees), before it has read it all.
    assert!(
        eventually(Duration::from_secs(30), || std::fs::metadata(&out)
            .is_ok_and(|m| m.len() >= TAIL_SAVED)),
        "wget never started saving"
    );
    srv.signal(libc::SIGKILL);
    drop(srv);
    // Restarted at once, as a supervisor would, while wget still reads.
    let srv = data.serve(driver, &flags);
    let st = client.wait();
    assert!(st.success(), "wget did not get the whole item: {st}");
    assert_eq!(sha256_file(&out), sha256_file(&file));
    completes_once(
        &data,
        srv,
        driver,
        &flags,
        &keys,
        "wget (never asked again)",
    );
}

on_every_driver!(a_tail_delivered_after_the_kill_completes_without_a_request);
