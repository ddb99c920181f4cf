//! Another kernel: boots Debian's Linux 6.1 (`linux-image-amd64`) as a guest under QEMU through
//! virtme-ng and, inside that ONE boot, runs `weir check-system`, `weir serve` on each driver
//! level (io_uring full, io_uring `--uring-features minimal` standing in for Linux 5.10, epoll)
//! and a ranged download with curl against each. Linux 5.x hosts are the deployment target; 6.1
//! is the oldest kernel reachable here.
//!
//! The guest sees this machine's filesystem read-only (the weir binary the test built, curl and
//! their libraries) and one writable directory (`--rwdir`) holding the data directory prepared
//! on the host with the CLI (the guest copies it to its own /tmp: SQLite's WAL needs shared memory
//! 9p cannot map), the guest script and what the guest writes back. All assertions run
//! here on the host, on those files. The guest CPU is emulated (TCG): the test checks what the
//! kernel does, never how fast.
//!
//! Needs `vng` (pip `virtme-ng`), `qemu-system-x86_64` (apt `qemu-system-x86`), busybox
//! (`busybox-static`) and `/boot/vmlinuz-6.1.0-*-amd64` (apt `linux-image-amd64`); `.ci/run`
//! installs them. Missing under `CI=true` is a failure; elsewhere the test says loudly that it
//! did not run. `WEIR_GUEST_OUT=DIR` keeps the guest's output files in DIR.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::{bin, pseudo_random, DataDir, Driver};

/// The driver levels the guest serves on: (output subdirectory, driver, `weir serve` flags).
const LEVELS: [(&str, Driver); 3] = [
    ("uring", Driver::Uring),
    ("uring-minimal", Driver::UringMinimal),
    ("epoll", Driver::Epoll),
];

/// Runs inside the guest: `sh guest.sh OUT WEIR DATA NETRC ITEM LEVEL:FLAGS...`. Writes each
/// command's output and exit status under OUT; `OUT/done` last, so a guest that died midway is
/// told apart from one that finished.
const GUEST_SCRIPT: &str = r#"set -u
out=$1 weir=$2 data=$3 netrc=$4 item=$5
shift 5
uname -r > "$out/uname.txt"
# SQLite's WAL cannot map its shared memory on 9p: the data directory goes to the guest's own
# /tmp (virtme-ng: an overlay in guest memory), as it would sit on a local disk (the item file
# stays on the shared filesystem).
local=$(mktemp -d /tmp/weir-data.XXXXXX)
cp -a "$data/." "$local/"
data=$local
df -T "$data" > "$out/data-fs.txt" 2>&1
"$weir" check-system --data-dir "$data" > "$out/check-system.txt" 2>&1
echo $? > "$out/check-system.rc"
for level in "$@"; do
  name=${level%%:*}
  flags=${level#*:}
  d=$out/$name
  mkdir -p "$d"
  # shellcheck disable=SC2086
  NO_COLOR=1 WEIR_LOG=info "$weir" serve --data-dir "$data" --listen 127.0.0.1:0 $flags \
    > "$d/stdout.txt" 2> "$d/stderr.txt" &
  pid=$!
  # Readiness is the banner's "listening on" line (bounded: 120 s on an emulated CPU), or exit.
  i=0
  while ! grep -q 'listening on http://' "$d/stdout.txt"; do
    kill -0 "$pid" 2>/dev/null || break
    i=$((i + 1))
    [ "$i" -gt 1200 ] && break
    sleep 0.1
  done
  addr=$(sed -n 's|.*listening on http://\([^ ]*\).*|\1|p' "$d/stdout.txt" | head -n 1)
  if [ -n "$addr" ]; then
    curl -s --netrc-file "$netrc" -r 1000-2999 -w '%{http_code}' -o "$d/range.bin" \
      "http://$addr/d/$item" > "$d/curl.txt" 2>&1
    echo $? > "$d/curl.rc"
  fi
  kill -TERM "$pid"
  wait "$pid"
  echo $? > "$d/exit.rc"
done
echo done > "$out/done"
"#;

/// `/boot/vmlinuz-6.1.0-*-amd64`, if installed.
fn kernel_61() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.1.0-") && n.ends_with("-amd64"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The guest's tools and kernel, or `None` (after failing under CI, or saying loudly why not).
fn guest_tools() -> Option<PathBuf> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("vng", "pip install virtme-ng"),
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("busybox", "apt-get install busybox-static"),
        ("curl", "apt-get install curl"),
    ] {
        if !weir_tests::have(tool) {
            missing.push(format!("{tool} ({package})"));
        }
    }
    let kernel = kernel_61();
    if kernel.is_none() {
        missing.push("/boot/vmlinuz-6.1.0-*-amd64 (apt-get install linux-image-amd64)".into());
    }
    if missing.is_empty() {
        return kernel;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the Linux 6.1 guest test needs: {}; CI must run it",
        missing.join(", ")
    );
    eprintln!(
        "\n{bar}\nSKIPPED guest::linux_6_1_serves_on_every_driver: missing {} (.ci/run installs \
         them)\n{bar}\n",
        missing.join(", "),
        bar = "!".repeat(78)
    );
    None
}

/// `weir ARGS --data-dir DATA` on the host, requiring success.
fn cli(data: &Path, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(bin("weir"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("weir's stdin");
    drop(input);
    let out = child.wait_with_output().expect("weir output");
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// One boot of Linux 6.1: `check-system` names the kernel and a driver; each driver level
/// listens, serves bytes 1000..3000 of the item to curl exactly (206), and exits 0 on SIGTERM.
#[test]
fn linux_6_1_serves_on_every_driver() {
    let Some(kernel) = guest_tools() else {
        return;
    };
    let weir = bin("weir");
    // The shared side of the gate: the guest's emulated CPUs keep both cores busy, so the
    // tests that measure rates do not run beside it. The guest's directory is NOT this temp dir:
    // virtme-ng gives the guest its own /tmp.
    let _gate = DataDir::new();
    let rw = tempfile::Builder::new()
        .prefix("weir-guest-")
        .tempdir_in(weir_tests::target_dir())
        .expect("guest dir under target/");
    let rw_path = rw.path();
    let data = rw_path.join("data");
    let out = rw_path.join("out");
    std::fs::create_dir_all(&out).unwrap();

    let content = pseudo_random(10_000, 61);
    let file = rw_path.join("song.bin");
    std::fs::write(&file, &content).unwrap();
    cli(
        &data,
        &["user", "add", "alice", "--password-stdin"],
        Some("wonderland\n"),
    );
    cli(
        &data,
        &["item", "add", "song", file.to_str().unwrap()],
        None,
    );
    cli(&data, &["cart", "add", "alice", "song"], None);
    let netrc = rw_path.join("netrc");
    std::fs::write(
        &netrc,
        "machine 127.0.0.1 login alice password wonderland\n",
    )
    .unwrap();
    let script = rw_path.join("guest.sh");
    std::fs::write(&script, GUEST_SCRIPT).unwrap();

    let mut exec = format!(
        "sh {} {} {} {} {} song",
        script.display(),
        out.display(),
        weir.display(),
        data.display(),
        netrc.display()
    );
    for (name, driver) in LEVELS {
        exec.push_str(&format!(" '{name}:{}'", driver.args().join(" ")));
    }
    let started = std::time::Instant::now();
    // Bounded: a guest that hangs in boot is killed (by this PID's timeout) after 10 minutes.
    let boot = Command::new("timeout")
        .arg("600")
        .arg("vng")
        .arg("-r")
        .arg(&kernel)
        .args([
            "--disable-kvm",
            "--force-9p",
            "--memory",
            "2G",
            "--cpus",
            "2",
        ])
        .arg("--rwdir")
        .arg(rw_path)
        .arg("--exec")
        .arg(&exec)
        .output()
        .expect("run vng");
    let took = started.elapsed();
    let log = format!(
        "vng {:?} after {took:.0?}\nstdout:\n{}\nstderr:\n{}",
        boot.status,
        String::from_utf8_lossy(&boot.stdout),
        String::from_utf8_lossy(&boot.stderr)
    );
    if let Ok(keep) = std::env::var("WEIR_GUEST_OUT") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        let status = Command::new("cp")
            .arg("-r")
            .arg(out.as_os_str())
            .arg(keep.join("out"))
            .status()
            .expect("cp");
        assert!(status.success());
        std::fs::write(keep.join("vng.log"), &log).unwrap();
    }
    assert!(out.join("done").exists(), "the guest did not finish: {log}");

    let uname = read(&out.join("uname.txt"));
    assert!(uname.starts_with("6.1."), "guest kernel {uname}: {log}");

    let check = read(&out.join("check-system.txt"));
    let kernel_line = check
        .lines()
        .find(|l| l.contains("kernel: "))
        .unwrap_or_else(|| panic!("no kernel line in check-system:\n{check}"));
    assert!(
        kernel_line.contains(&uname),
        "check-system names another kernel than {uname}: {kernel_line}"
    );
    let driver_line = check
        .lines()
        .find(|l| l.contains("driver: "))
        .unwrap_or_else(|| panic!("no driver choice in check-system:\n{check}"));
    assert!(
        driver_line.contains("driver: io_uring") || driver_line.contains("driver: epoll"),
        "check-system picks no driver: {driver_line}"
    );
    eprintln!("guest {uname} ({took:.0?}):\n{kernel_line}\n{driver_line}");

    for (name, driver) in LEVELS {
        let d = out.join(name);
        let stdout = read(&d.join("stdout.txt"));
        let stderr = read(&d.join("stderr.txt"));
        let listen = stdout
            .lines()
            .find(|l| l.contains("listening on http://"))
            .unwrap_or_else(|| panic!("{name}: weir never listened:\n{stdout}\n{stderr}"));
        driver.check_listen_line(listen);
        let starting = stderr
            .lines()
            .find(|l| l.contains("weir starting"))
            .unwrap_or_else(|| panic!("{name}: no `weir starting` log line:\n{stderr}"));
        eprintln!("{name}: {listen}\n{name}: {starting}");
        assert_eq!(read(&d.join("curl.rc")), "0", "{name}: curl failed");
        assert_eq!(read(&d.join("curl.txt")), "206", "{name}: status");
        let got = std::fs::read(d.join("range.bin")).expect("range.bin");
        assert!(
            got == content[1000..3000],
            "{name}: bytes 1000-2999 differ ({} bytes received)",
            got.len()
        );
        assert_eq!(
            read(&d.join("exit.rc")),
            "0",
            "{name}: exit status after SIGTERM:\n{stderr}"
        );
    }
}
