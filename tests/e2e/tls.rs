//! HTTPS served by weir itself (`--tls-listen`), with a test CA made by each test (openssl CLI):
//! real clients get exact bytes and the item completes once; TLS 1.3 and 1.2 with ALPN; an
//! aborted download never completes; a certificate rotated under an open download; a file
//! truncated under a TLS download; bad input on both ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{
    bin, eventually, have, on_every_driver, sha256_file, sha256_hex, summary_number, DataDir,
    Driver, Metrics, Server, ALICE,
};

/// A CA and certificates it issued, as PEM files in one directory.
struct TestCa {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        assert!(have("openssl"), "openssl must be installed");
        let dir = dir.join("ca");
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=weir test CA",
            ],
        );
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        TestCa { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issue a certificate for localhost / 127.0.0.1 with subject CN `cn` and an RSA
    /// (`rsa:2048`) or ECDSA (`ec`) key; returns (fullchain, key) paths named after `cn`.
    fn issue(&self, cn: &str, rsa: bool) -> (PathBuf, PathBuf) {
        let key = format!("{cn}.key");
        let csr = format!("{cn}.csr");
        let leaf = format!("{cn}.leaf.pem");
        let mut args = vec!["req", "-newkey"];
        if rsa {
            args.push("rsa:2048");
        } else {
            args.extend(["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        let subj = format!("/CN={cn}");
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&self.dir, &args);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &leaf,
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let full = self.dir.join(format!("{cn}.full.pem"));
        let mut chain = std::fs::read(self.dir.join(&leaf)).unwrap();
        chain.extend(std::fs::read(self.ca()).unwrap());
        std::fs::write(&full, chain).unwrap();
        (full, self.dir.join(key))
    }
}

/// A weir serving plain HTTP and HTTPS, with the certificate files it was given (copied to
/// `live/`, as certbot's deploy would).
struct Tls {
    srv: Server,
    https: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.https, path)
    }
}

fn serve_tls(data: &DataDir, driver: Driver, ca: &TestCa, rsa: bool, extra: &[&str]) -> Tls {
    let (full, key) = ca.issue("first", rsa);
    let live = data.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key_live) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    std::fs::copy(full, &cert).unwrap();
    std::fs::copy(key, &key_live).unwrap();
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key_live.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let srv = data.serve(driver, &args);
    let line = srv
        .banner
        .iter()
        .find_map(|l| l.split("listening on https://").nth(1))
        .expect("the banner names the HTTPS address");
    driver.check_listen_line(line);
    let https = line.split_whitespace().next().unwrap().parse().unwrap();
    Tls {
        srv,
        https,
        cert,
        key: key_live,
    }
}

/// `weir history alice --json` items.
fn history(data: &DataDir) -> Vec<String> {
    data.ok(&["history", "alice", "--json"], None)
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("\"item\":\"")? + 8..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

/// Delivered bytes of alice's first cart row.
fn delivered(data: &DataDir) -> u64 {
    let out = data.ok(&["cart", "list", "alice", "--json"], None);
    let line = out.lines().next().unwrap_or("");
    line.find("\"delivered_bytes\":")
        .map(|i| &line[i + 18..])
        .and_then(|r| r[..r.find([',', '}'])?].trim().parse().ok())
        .unwrap_or(0)
}

fn curl_tls(ca: &TestCa, url: &str, out: &Path, extra: &[&str]) -> std::process::ExitStatus {
    Command::new("curl")
        .args(["-s", "-S", "--max-time", "120", "--cacert"])
        .arg(ca.ca())
        .args(["-u", ALICE, "-o"])
        .arg(out)
        .args(extra)
        .arg(url)
        .status()
        .expect("run curl")
}

const SIZE: usize = 16 << 20;

/// curl, wget, aria2c (-x 4) and axel -n 40 fetch the same file over HTTPS, byte-exact; the
/// item completes once. RSA key.
fn https_clients(driver: Driver) {
    for tool in ["wget", "aria2c", "axel", "curl"] {
        assert!(have(tool), "{tool} must be installed");
    }
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    let file = data.alice_with_item("big", SIZE, 7);
    let want = sha256_hex(&std::fs::read(&file).unwrap());
    let t = serve_tls(&data, driver, &ca, true, &[]);
    let url = t.url("/d/big");

    let out = data.path().join("curl.out");
    assert!(curl_tls(&ca, &url, &out, &[]).success(), "curl failed");
    assert_eq!(sha256_file(&out), want, "curl bytes differ");
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["big"]),
        "the HTTPS download did not complete"
    );

    let out = data.path().join("wget.out");
    let st = Command::new("wget")
        .arg("-q")
        .arg(format!("--ca-certificate={}", ca.ca().display()))
        .args(["--user=alice", "--password=wonderland", "-O"])
        .arg(&out)
        .arg(&url)
        .status()
        .expect("run wget");
    assert!(st.success(), "wget failed: {st}");
    assert_eq!(sha256_file(&out), want, "wget bytes differ");

    let st = Command::new("aria2c")
        .args(["-q", "-x4", "-s4", "--allow-overwrite=true"])
        .arg(format!("--ca-certificate={}", ca.ca().display()))
        .args(["--http-user=alice", "--http-passwd=wonderland", "-d"])
        .arg(data.path())
        .args(["-o", "aria.out"])
        .arg(&url)
        .status()
        .expect("run aria2c");
    assert!(st.success(), "aria2c failed: {st}");
    assert_eq!(sha256_file(&data.path().join("aria.out")), want, "aria2c");

    // axel cannot take a CA file: it checks nothing with -k (the bytes are still checked).
    let out = data.path().join("axel.out");
    let st = Command::new("axel")
        .args(["-q", "-k", "-n", "40", "-o"])
        .arg(&out)
        .arg(format!("https://{ALICE}@{}/d/big", t.https))
        .status()
        .expect("run axel");
    assert!(st.success(), "axel failed: {st}");
    assert_eq!(sha256_file(&out), want, "axel -n 40 bytes differ");

    assert_eq!(history(&data), ["big"], "completed once");
    t.srv.stop();
}

/// `openssl s_client` with TLS 1.3 and with TLS 1.2, ALPN http/1.1, ECDSA key: a GET answers
/// 200 with the file.
fn s_client(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.alice_with_item("small", 5000, 3);
    let t = serve_tls(&data, driver, &ca, false, &[]);
    let auth = weir_tests::basic_auth(ALICE);
    for (flag, proto) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let mut child = Command::new("openssl")
            .args(["s_client", flag, "-alpn", "http/1.1", "-ign_eof", "-CAfile"])
            .arg(ca.ca())
            .args(["-servername", "localhost", "-connect"])
            .arg(t.https.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_client");
        let req =
            format!("GET /d/small HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ALPN protocol: http/1.1"), "{flag}: {text}");
        assert!(
            text.contains(&format!("Protocol  : {proto}")) || text.contains(&format!(", {proto},")),
            "{flag}: {text}"
        );
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{flag}: {text}"
        );
        assert!(text.contains("HTTP/1.1 200 OK"), "{flag}: {text}");
        assert!(text.contains("Content-Length: 5000"), "{flag}: {text}");
    }
    // `Connection: close`: the response ends with close_notify, so a strict client (rustls
    // refuses an EOF without it) reads it to the end without error.
    let (conn, sock) = rustls_client(&ca, t.https);
    let mut stream = rustls::StreamOwned::new(conn, sock);
    let req =
        format!("GET /d/small HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .expect("the response ends with close_notify");
    assert!(resp.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(resp.ends_with(&std::fs::read(data.path().join("small.bin")).unwrap()));
    t.srv.stop();
}

/// A slow HTTPS download killed mid-way never completes, and is credited less than the file.
fn aborted_tls_download_never_completes(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.alice_with_item("movie", 32 << 20, 9);
    let t = serve_tls(&data, driver, &ca, false, &[]);
    let mut dl = slow_curl(&ca, &t.url("/d/movie"), &data.path().join("slow.out"), "1M");
    assert!(
        eventually(Duration::from_secs(20), || delivered(&data) > 0),
        "the journal never showed the download under way"
    );
    let _ = dl.kill();
    let _ = dl.wait();
    assert!(t.srv.stop().success());
    let got = delivered(&data);
    assert!(got > 0 && got < 32 << 20, "credited {got}");
    assert!(
        history(&data).is_empty(),
        "an aborted TLS download completed"
    );
}

fn slow_curl(ca: &TestCa, url: &str, out: &Path, rate: &str) -> Child {
    Command::new("curl")
        .args(["-s", "--limit-rate", rate, "--cacert"])
        .arg(ca.ca())
        .args(["-u", ALICE, "-o"])
        .arg(out)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run curl")
}

/// The subject CN of the certificate a new handshake gets.
fn served_cn(ca: &TestCa, addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-CAfile"])
        .arg(ca.ca())
        .args(["-servername", "localhost", "-connect"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subject=").map(str::to_string))
        .unwrap_or_else(|| panic!("no subject in: {text}"))
}

/// Rotate the certificate under an open download (POST /tls/reload, then SIGHUP): the download
/// finishes byte-exact, new handshakes see the new certificate; a bad file is refused and the
/// one in use stays.
fn certificate_rotation(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    let file = data.alice_with_item("movie", 8 << 20, 5);
    let token = "t0ken";
    let t = serve_tls(
        &data,
        driver,
        &ca,
        false,
        &["--admin-listen", "127.0.0.1:0", "--admin-token", token],
    );
    let admin = t.srv.admin_url();
    assert!(served_cn(&ca, t.https).contains("first"));
    let out = data.path().join("slow.out");
    let mut dl = slow_curl(&ca, &t.url("/d/movie"), &out, "2M");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::metadata(&out)
            .is_ok_and(|m| m.len() > 0)),
        "the download never got under way"
    );
    let reload = || {
        weir_tests::curl(
            &format!("{admin}/tls/reload"),
            &[
                "-X",
                "POST",
                "-H",
                &format!("Authorization: Bearer {token}"),
            ],
        )
    };
    // A bad key: refused, the old certificate stays.
    std::fs::write(&t.key, "not a key\n").unwrap();
    let r = reload();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(served_cn(&ca, t.https).contains("first"), "old cert kept");
    // A new pair through the admin API.
    let (full, key) = ca.issue("second", true);
    std::fs::copy(&full, &t.cert).unwrap();
    std::fs::copy(&key, &t.key).unwrap();
    assert_eq!(reload().status, 200);
    assert!(served_cn(&ca, t.https).contains("second"));
    // And another through SIGHUP (certbot's deploy hook).
    let (full, key) = ca.issue("third", false);
    std::fs::copy(&full, &t.cert).unwrap();
    std::fs::copy(&key, &t.key).unwrap();
    t.srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || served_cn(&ca, t.https)
            .contains("third")),
        "SIGHUP did not reload"
    );
    assert!(dl.wait().unwrap().success(), "the open download was cut");
    assert_eq!(
        sha256_file(&out),
        sha256_hex(&std::fs::read(&file).unwrap())
    );
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["movie"]),
        "the download across rotations did not complete"
    );
    let m = Metrics::fetch(&admin, token);
    assert!(m.value("weir_connections_accepted_total") > 0);
    t.srv.stop();
}

/// A content file truncated under an HTTPS download (file bytes are read with pread, never
/// from the mapping): no crash, the download fails, the item then answers 503.
fn truncated_under_tls(driver: Driver) {
    const BIG: u64 = 64 << 20;
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.alice_with_item("big", BIG as usize, 11);
    let mut t = serve_tls(&data, driver, &ca, false, &[]);
    let out = data.path().join("slow.out");
    let mut dl = slow_curl(&ca, &t.url("/d/big"), &out, "4M");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::metadata(&out)
            .is_ok_and(|m| m.len() > 0)),
        "the download never got under way"
    );
    let store = data.path().join("data").join("store");
    for entry in std::fs::read_dir(&store).unwrap() {
        let p = entry.unwrap().path();
        if std::fs::metadata(&p).unwrap().len() == BIG {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(1 << 20).unwrap();
        }
    }
    assert!(
        !dl.wait().unwrap().success(),
        "a truncated download completed"
    );
    assert!(t.srv.alive(), "the server died");
    let again = data.path().join("again.out");
    assert!(
        eventually(Duration::from_secs(5), || {
            let r = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(ca.ca())
                .args(["-u", ALICE])
                .arg(t.url("/d/big"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&r.stdout) == "503"
        }),
        "the truncated item does not answer 503 over HTTPS"
    );
    let _ = std::fs::remove_file(again);
    assert!(t.srv.alive());
    t.srv.stop();
}

/// Read until the server closes (or `limit`); what arrived.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, start.elapsed() < limit),
        }
    }
}

/// Bad input: plain HTTP on the TLS port gets a plain 400 and is closed, a garbage record is
/// closed; a ClientHello on the plain port gets 400; a handshake that never finishes is cut at the head timeout. The server
/// keeps serving HTTPS.
fn bad_input(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.alice_with_item("small", 5000, 3);
    let t = serve_tls(&data, driver, &ca, false, &["--header-timeout", "1s"]);

    let mut s = TcpStream::connect(t.https).unwrap();
    s.write_all(b"GET /d/small HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (resp, closed) = read_to_close(&mut s, Duration::from_secs(5));
    assert!(closed, "plain HTTP on the TLS port was not closed");
    assert_eq!(
        weir_tests::status_of(&resp),
        400,
        "plain HTTP on the TLS port"
    );

    let mut s = TcpStream::connect(t.https).unwrap();
    s.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    s.write_all(&[0xAB; 32]).unwrap();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5));
    assert!(closed, "a garbage record was not closed");

    // A ClientHello on the plain port: openssl sees an HTTP answer, not a handshake.
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(t.srv.addr.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a handshake succeeded on the plain port"
    );
    let mut s = TcpStream::connect(t.srv.addr).unwrap();
    // The first bytes of a TLS 1.2 ClientHello record.
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let (resp, _) = read_to_close(&mut s, Duration::from_secs(5));
    assert_eq!(weir_tests::status_of(&resp), 400);

    // A handshake that never finishes: cut at the head timeout.
    let mut s = TcpStream::connect(t.https).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let start = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(10));
    assert!(
        closed && start.elapsed() < Duration::from_secs(8),
        "a stuck handshake stayed open"
    );

    let out = data.path().join("ok.out");
    assert!(curl_tls(&ca, &t.url("/d/small"), &out, &[]).success());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 5000);
    t.srv.stop();
}

/// Ranges over HTTPS: a 206 with exactly the bytes asked for.
fn ranges_over_tls(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    let file = data.alice_with_item("big", 1 << 20, 13);
    let bytes = std::fs::read(&file).unwrap();
    let t = serve_tls(&data, driver, &ca, false, &[]);
    let r = weir_tests::curl(
        &t.url("/d/big"),
        &[
            "--cacert",
            ca.ca().to_str().unwrap(),
            "-u",
            ALICE,
            "-r",
            "1000-70999",
        ],
    );
    assert_eq!(r.status, 206);
    assert!(r.body == bytes[1000..71000], "range bytes differ");
    t.srv.stop();
}

/// A rustls client connection to `addr` trusting `ca`, handshake done.
fn rustls_client(ca: &TestCa, addr: SocketAddr) -> (rustls::ClientConnection, TcpStream) {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    (conn, sock)
}

/// An HTTPS client that completes the handshake, sends its request and never reads again is
/// credited nothing when the server gives up on it (the send timeout).
fn never_reading_tls_client_is_credited_nothing(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.alice_with_item("movie", 64 << 20, 21);
    let token = "t0ken";
    let t = serve_tls(
        &data,
        driver,
        &ca,
        false,
        &[
            "--send-timeout",
            "2s",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            token,
        ],
    );
    let admin = t.srv.admin_url();
    let (mut conn, mut sock) = rustls_client(&ca, t.https);
    let req = format!(
        "GET /d/movie HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        weir_tests::basic_auth(ALICE)
    );
    conn.writer().write_all(req.as_bytes()).unwrap();
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
    // Never read again: the server's send stalls and its send timeout cuts the connection.
    assert!(
        eventually(Duration::from_secs(20), || Metrics::fetch(&admin, token)
            .value("weir_timeouts_total")
            >= 1),
        "the stalled TLS send never timed out"
    );
    let m = Metrics::fetch(&admin, token);
    assert!(m.value("weir_bytes_sent_total") > 0, "nothing was sent");
    assert_eq!(
        m.value("weir_bytes_credited_total"),
        0,
        "a TLS client that read nothing was credited"
    );
    drop(sock);
    assert!(t.srv.stop().success());
    assert_eq!(delivered(&data), 0);
    assert!(history(&data).is_empty());
}

/// An album's zip (curl) and a signed link over HTTPS, then a shaped download: the zip unzips
/// to the exact tracks and completes the album once, the link serves the exact file, and the
/// user's rate holds over TLS too.
fn zip_link_and_shaping_over_tls(driver: Driver) {
    assert!(have("unzip"), "unzip must be installed");
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    data.add_user("alice", "wonderland");
    let tracks: Vec<PathBuf> = (1..=3)
        .map(|i| {
            data.make_file(
                &format!("track{i:02}.flac"),
                (1 << 20) | (i * 1000),
                i as u64,
            )
        })
        .collect();
    let mut args = vec!["album", "add", "best"];
    let paths: Vec<String> = tracks.iter().map(|t| t.to_str().unwrap().into()).collect();
    args.extend(paths.iter().map(String::as_str));
    data.ok(&args, None);
    data.ok(&["cart", "add", "alice", "best"], None);
    let song = data.make_file("song.bin", 3 << 20, 77);
    data.add_item_for("song", &song, "alice");
    let link = data.ok(
        &["token", "--user", "alice", "--item", "song", "--ttl", "600"],
        None,
    );
    let t = serve_tls(&data, driver, &ca, true, &["--default-rate", "1MiB"]);

    let zip = data.path().join("best.zip");
    let start = Instant::now();
    assert!(curl_tls(&ca, &t.url("/d/best.zip"), &zip, &[]).success());
    let took = start.elapsed();
    let dir = data.path().join("x");
    let st = Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "unzip failed");
    for tr in &tracks {
        let name = tr.file_name().unwrap();
        assert_eq!(sha256_file(&dir.join(name)), sha256_file(tr), "{name:?}");
    }
    // Over 3 MiB at 1 MiB/s: well over a second, whatever the first burst.
    assert!(
        took >= Duration::from_millis(1500),
        "the shaped zip took only {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["best"]),
        "the album did not complete over HTTPS"
    );

    let out = data.path().join("link.out");
    let st = Command::new("curl")
        .args(["-s", "-S", "--cacert"])
        .arg(ca.ca())
        .arg("-o")
        .arg(&out)
        .arg(t.url(link.trim()))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(sha256_file(&out), sha256_file(&song), "signed link bytes");
    t.srv.stop();
}

/// A keep-alive HTTPS client reads the whole body and keeps its connection open (no FIN, no
/// close_notify to prove anything): the sweep's acknowledgement poll completes the item within
/// a second of the last byte (plus the time `weir history` takes to look).
fn a_read_tls_download_completes_within_a_second(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    let file = data.alice_with_item("movie", 4 << 20, 31);
    let t = serve_tls(&data, driver, &ca, false, &[]);
    let (conn, sock) = rustls_client(&ca, t.https);
    let mut stream = rustls::StreamOwned::new(conn, sock);
    let req = format!(
        "GET /d/movie HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        weir_tests::basic_auth(ALICE)
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let (head_len, body_len) = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            break (i + 4, len);
        }
    };
    while got.len() < head_len + body_len {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    let last_byte = Instant::now();
    assert!(
        got[head_len..] == std::fs::read(&file).unwrap()[..],
        "body differs"
    );
    assert!(
        eventually(Duration::from_secs(5), || history(&data) == ["movie"]),
        "a fully read TLS download never completed"
    );
    let took = last_byte.elapsed();
    eprintln!("completed {took:?} after the last byte");
    assert!(
        took < Duration::from_millis(1500),
        "completed only {took:?} after the last byte"
    );
    drop(stream);
    t.srv.stop();
}

/// The story's 40-connection download manager over HTTPS: `weir-load forty` trusting the test
/// CA (`--cacert`), 2 users x 40 connections, every download's bytes verified by hash.
fn forty_over_https(driver: Driver) {
    let data = DataDir::new();
    let ca = TestCa::new(data.path());
    let file = data.alice_with_item("big", SIZE, 12);
    let want = sha256_hex(&std::fs::read(&file).unwrap());
    let t = serve_tls(&data, driver, &ca, false, &["--grace", "1h"]);
    let out = data.path().join("run");
    let st = Command::new(bin("weir-load"))
        .args([
            "forty",
            &t.url("/d/big"),
            "--users",
            "2",
            "--connections",
            "40",
        ])
        .arg("--cacert")
        .arg(ca.ca())
        .args([
            "--duration",
            "6s",
            "--credentials",
            ALICE,
            "--sha256",
            &want,
        ])
        .args(["--no-progress", "--out"])
        .arg(&out)
        .status()
        .expect("run weir-load");
    assert!(st.success(), "weir-load forty over HTTPS failed: {st}");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let number = |key: &str| summary_number(&summary, key);
    assert!(number("downloads_completed") >= 1.0, "{summary}");
    assert_eq!(number("hash_mismatches"), 0.0, "{summary}");
    assert!(
        eventually(Duration::from_secs(10), || history(&data) == ["big"]),
        "the purchase did not complete once: {:?}",
        history(&data)
    );
    t.srv.stop();
}

on_every_driver!(
    forty_over_https,
    a_read_tls_download_completes_within_a_second,
    zip_link_and_shaping_over_tls,
    never_reading_tls_client_is_credited_nothing,
    https_clients,
    s_client,
    aborted_tls_download_never_completes,
    certificate_rotation,
    truncated_under_tls,
    bad_input,
    ranges_over_tls,
);
