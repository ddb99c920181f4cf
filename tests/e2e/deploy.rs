//! Deploying: `weir check-system` (every check on its own line with the value found, the
//! recommendation and the command that sets it; the driver it names is the one `serve` starts),
//! `contrib/weir.service` (passes `systemd-analyze verify` with no complaint), the example
//! `contrib/weir.toml` (every key it shows is one `weir serve --config` accepts), and the `.deb`
//! (`cargo deb`, inspected with `dpkg-deb`, unpacked into a throwaway root when run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use weir_tests::{bin, have, DataDir, Server};

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn weir(args: &[&str]) -> Output {
    Command::new(bin("weir"))
        .args(args)
        .env_remove("WEIR_DRIVER")
        .env_remove("WEIR_URING_FEATURES")
        .env_remove("WEIR_CONFIG")
        .env_remove("WEIR_FORCE_EPOLL")
        .stdin(Stdio::null())
        .output()
        .expect("run weir")
}

/// `weir check-system ARGS`, which must exit 0; its stdout.
fn check_system(args: &[&str]) -> String {
    let mut full = vec!["check-system"];
    full.extend_from_slice(args);
    let out = weir(&full);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weir {full:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The report's line for `name`.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| {
            let rest = l.strip_prefix("OK   ").or_else(|| l.strip_prefix("WARN "));
            rest.is_some_and(|r| r.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no OK/WARN line for {name} in:\n{report}"))
}

fn proc_sys(path: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/sys/{path}")).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn check_system_reports_each_setting_with_its_fix() {
    let report = check_system(&["--connections", "50000"]);
    assert!(report.starts_with("weir check-system for 50000 connections\n"));
    for name in ["kernel", "io_uring", "driver"] {
        assert!(line(&report, name).contains("(recommended: "));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(line(&report, "kernel").contains(kernel.trim()));

    let nofile = line(&report, "RLIMIT_NOFILE");
    assert!(nofile.contains("hard >= 51024"), "{nofile}");
    assert!(nofile.contains("set: LimitNOFILE=65536"), "{nofile}");
    assert!(nofile.contains("ulimit -n 65536"), "{nofile}");

    // Each sysctl: the value this host has (as /proc shows it) and `sysctl -w` to change it.
    for (name, path) in [
        ("net.core.somaxconn", "net/core/somaxconn"),
        ("net.ipv4.tcp_tw_reuse", "net/ipv4/tcp_tw_reuse"),
        (
            "net.ipv4.ip_local_port_range",
            "net/ipv4/ip_local_port_range",
        ),
        ("net.ipv4.tcp_rmem", "net/ipv4/tcp_rmem"),
        ("net.ipv4.tcp_wmem", "net/ipv4/tcp_wmem"),
        ("net.ipv4.tcp_mem", "net/ipv4/tcp_mem"),
    ] {
        let l = line(&report, name);
        assert!(
            l.contains(&format!("{name}: {} ", proc_sys(path))),
            "{l} (host: {})",
            proc_sys(path)
        );
        assert!(l.contains("(recommended: "), "{l}");
        assert!(l.contains(&format!("set: sysctl -w {name}=")), "{l}");
    }
    // 50,000 connections at 2 x the default 32 KiB grant.
    let mem = line(&report, "net.ipv4.tcp_mem");
    assert!(mem.contains("(50000 x 64 KiB)"), "{mem}");
}

#[test]
fn check_system_json_is_one_object_with_every_check() {
    let json = check_system(&["--json", "--connections", "1000"]);
    let script = "import json, sys\n\
                  d = json.load(sys.stdin)\n\
                  assert d['connections'] == 1000, d\n\
                  names = [c['name'] for c in d['checks']]\n\
                  assert all(c['verdict'] in ('OK', 'WARN') for c in d['checks']), d\n\
                  assert d['warnings'] == sum(c['verdict'] == 'WARN' for c in d['checks'])\n\
                  for c in d['checks']:\n    assert c['found'] and c['recommended'], c\n\
                  print(' '.join(names))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{json}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kernel io_uring driver RLIMIT_NOFILE net.core.somaxconn net.ipv4.tcp_tw_reuse \
         net.ipv4.ip_local_port_range net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.ipv4.tcp_mem"
    );
}

/// The driver check-system names is the one `weir serve` starts with, for each `--driver`.
#[test]
fn check_system_names_the_driver_serve_picks() {
    for (flags, expect) in [
        (&[][..], "io_uring"),
        (&["--driver", "epoll"][..], "epoll"),
        (&["--uring-features", "minimal"][..], "io_uring"),
    ] {
        let report = check_system(flags);
        let driver = line(&report, "driver");
        let data = DataDir::new();
        let srv = Server::start(&data.path().join("data"), flags, &[]);
        assert!(
            driver.contains(&format!("driver: {expect}")),
            "{flags:?}: {driver}"
        );
        assert!(
            srv.listen_line.contains(&format!("({expect}")),
            "{flags:?}: check-system said {driver}, serve: {}",
            srv.listen_line
        );
        if flags.contains(&"minimal") {
            assert!(driver.contains("multishot_accept=false"), "{driver}");
            assert!(srv.listen_line.contains("multishot_accept=false"));
        }
        assert!(srv.stop().success());
    }
}

/// Where io_uring is refused (seccomp, as in a default container profile): WARN lines that say
/// so and why, the epoll driver, and still exit 0.
#[test]
fn check_system_explains_a_refused_io_uring() {
    const PY: &str = "/usr/bin/python3";
    let filter = "import errno, os, sys, seccomp\n\
                  f = seccomp.SyscallFilter(seccomp.ALLOW)\n\
                  f.add_rule(seccomp.ERRNO(errno.EPERM), 'io_uring_setup')\n\
                  f.load()\n\
                  os.execv(sys.argv[1], sys.argv[1:])\n";
    let out = Command::new(PY)
        .args(["-c", filter])
        .arg(bin("weir"))
        .arg("check-system")
        .env_remove("WEIR_DRIVER")
        .output()
        .expect("python3-seccomp is needed (apt-get install python3-seccomp)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    let ring = line(&report, "io_uring");
    assert!(ring.starts_with("WARN "), "{ring}");
    assert!(ring.contains("Operation not permitted"), "{ring}");
    let driver = line(&report, "driver");
    assert!(driver.starts_with("WARN driver: epoll"), "{driver}");
    assert!(driver.contains("io_uring unavailable"), "{driver}");
}

/// The unit parses and passes systemd's own checks: `systemd-analyze verify` prints nothing
/// (it exits 0 even for an unknown key or a bad value, and says so on stderr).
#[test]
fn unit_file_verifies() {
    assert!(
        have("systemd-analyze"),
        "systemd-analyze is needed (apt-get install systemd)"
    );
    let unit = std::fs::read_to_string(workspace().join("contrib/weir.service")).unwrap();
    for directive in [
        "User=weir",
        "ExecStart=/usr/bin/weir serve --data-dir /var/lib/weir --config /etc/weir/weir.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/weir",
        "StateDirectory=weir",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "#AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == directive), "{directive} missing");
    }
    assert!(!unit.lines().any(|l| l.starts_with("AmbientCapabilities=")));
    // Stopping waits out the drain (30 s by default) and then some.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec={stop}");

    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("weir.service");
    let weir = bin("weir");
    std::fs::write(&copy, unit.replace("/usr/bin/weir", weir.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The example config parses as it ships (all commented) and with every example uncommented.
#[test]
fn example_config_holds_only_keys_serve_accepts() {
    let text = std::fs::read_to_string(workspace().join("contrib/weir.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shipped = dir.path().join("shipped.toml");
    std::fs::write(&shipped, &text).unwrap();
    check_system(&["--config", shipped.to_str().unwrap()]);

    // `# key = value` and `# [table]` lines are the examples; prose has no `=`.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let examples = uncommented.lines().filter(|l| l.contains(" = ")).count();
    assert!(examples >= 20, "only {examples} examples:\n{uncommented}");
    let all = dir.path().join("all.toml");
    std::fs::write(&all, &uncommented).unwrap();
    // A bad key or value would fail check-system (it resolves the file as serve does).
    let report = check_system(&["--config", all.to_str().unwrap()]);
    // The example sets driver = "auto".
    assert!(
        line(&report, "driver").contains("--driver auto"),
        "{report}"
    );
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package: both binaries, the unit, the conffile, the postinst that creates the user and
/// the data directory; and what dpkg makes of it when unpacked.
#[test]
fn deb_package_installs_everything_needed() {
    let cargo_deb = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(cargo_deb, "cargo-deb is needed (cargo install cargo-deb)");
    // Package the binaries this test run built (debug, so that no release build is needed
    // here); `cargo deb` alone builds and packages release ones with the same metadata.
    let weir_bin = bin("weir");
    let profile_dir = weir_bin.parent().unwrap();
    let profile = if profile_dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    let out_dir = tempfile::tempdir().unwrap();
    let deb = out_dir.path().join("weir.deb");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace())
        .args([
            "deb",
            "-p",
            "weir",
            "--no-build",
            "--fast",
            "--profile",
            profile,
            "-o",
        ])
        .arg(&deb)
        .status()
        .unwrap();
    assert!(st.success(), "cargo deb failed");

    let contents = dpkg_deb(&["-c"], &deb);
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/weir"),
        ("-rwxr-xr-x", "./usr/bin/weir-load"),
        ("-rw-r-----", "./etc/weir/weir.toml"),
        ("-rw-r--r--", "./usr/lib/systemd/system/weir.service"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} not in:\n{contents}"
        );
    }
    let info = dpkg_deb(&["-I"], &deb);
    for want in ["Package: weir", "Depends:", "postinst", "conffiles"] {
        assert!(info.contains(want), "{want} not in:\n{info}");
    }
    let control = tempfile::tempdir().unwrap();
    let st = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path())
        .status()
        .unwrap();
    assert!(st.success());
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/weir/weir.toml");
    let postinst = read("postinst");
    assert!(postinst.contains("useradd --system"), "{postinst}");
    assert!(
        postinst.contains("install -d -o weir -g weir -m 0750 /var/lib/weir"),
        "{postinst}"
    );
    // cargo-deb's unit snippet replaced #DEBHELPER#: systemd learns of the unit, which the
    // package neither enables nor starts (the operator configures first).
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    assert!(postinst.contains("daemon-reload"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    let st = Command::new("sh")
        .arg("-n")
        .arg(control.path().join("postinst"))
        .status()
        .unwrap();
    assert!(st.success(), "postinst is not valid sh");

    // As root (CI): dpkg unpacks it into a throwaway root and records the conffile. (Not
    // configured there: postinst would run chrooted into a root with no shell, useradd, ...)
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.path().display()))
        .arg("--unpack")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg --unpack: {out:?}");
    for path in [
        "usr/bin/weir",
        "usr/bin/weir-load",
        // A conffile waits under .dpkg-new until configure (which runs postinst) moves it.
        "etc/weir/weir.toml.dpkg-new",
        "usr/lib/systemd/system/weir.service",
    ] {
        assert!(root.path().join(path).is_file(), "{path} not unpacked");
    }
    let version = Command::new(root.path().join("usr/bin/weir"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("weir "));
    let status = std::fs::read_to_string(root.path().join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: weir"), "{status}");
    assert!(status.contains("/etc/weir/weir.toml"), "{status}");
}
