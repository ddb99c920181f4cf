//! `weir-load demo` against a stand-in for `weir serve` that honours the same contract (flags,
//! banner lines, SIGTERM), built on nginx. The real engine is tested the same way once it serves.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

const FAKE_WEIR: &str = r#"#!/bin/bash
# Stand-in for `weir serve --data-dir D --listen ADDR`: prints the banner, serves demo-64m.
set -e
[ "$1" = serve ] || { echo "usage: weir serve" >&2; exit 2; }
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) D="$2"; shift 2;;
    --listen) L="$2"; shift 2;;
    *) echo "unknown flag $1" >&2; exit 2;;
  esac
done
mkdir -p "$D/root/d" "$D/tmp"
chmod 755 "$D" "$D/root" "$D/root/d"
head -c 67108864 /dev/zero > "$D/root/d/demo-64m"
cat > "$D/nginx.conf" <<CONF
worker_processes 2;
error_log $D/error.log;
pid $D/nginx.pid;
events { worker_connections 1024; }
http {
  log_format weir '\$request \$status \$http_range \$remote_addr \$remote_user';
  access_log $D/access.log weir;
  sendfile on;
  client_body_temp_path $D/tmp/b; proxy_temp_path $D/tmp/p; fastcgi_temp_path $D/tmp/f;
  uwsgi_temp_path $D/tmp/u; scgi_temp_path $D/tmp/s;
  server { listen $L; root $D/root; }
}
CONF
echo "weir (stand-in): data dir $D"
echo "demo credentials: demo:pw-123"
echo "demo item demo-64m: http://$L/d/demo-64m"
nginx -p "$D" -c "$D/nginx.conf" -g 'daemon off;' &
NGX=$!
trap 'kill -TERM $NGX; wait $NGX; cp "$D/access.log" "$LOGCOPY" 2>/dev/null; exit 0' TERM
for i in $(seq 1 200); do
  (exec 3<>/dev/tcp/${L%:*}/${L#*:}) 2>/dev/null && break
  sleep 0.05
done
echo "listening on http://$L"
wait $NGX
"#;

#[test]
fn demo_runs_forty_with_the_printed_credentials_and_stops_the_server() {
    require_nginx();
    let dir = tempfile::tempdir().unwrap();
    let weir = dir.path().join("weir");
    std::fs::write(&weir, FAKE_WEIR).unwrap();
    std::fs::set_permissions(&weir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("demo-result");
    let access = dir.path().join("access.log");
    let run = weir_load_bin()
        .args([
            "demo",
            "--users",
            "2",
            "--connections",
            "4",
            "--duration",
            "2s",
            "--no-progress",
        ])
        .arg("--weir")
        .arg(&weir)
        .arg("--out")
        .arg(&out)
        .env("LOGCOPY", &access)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("weir> demo credentials: demo:pw-123"));
    assert!(
        stdout.contains(&format!("results: {}", out.display())),
        "{stdout}"
    );
    let s = assert_result_dir(&out);
    assert!(s["downloads_completed"].as_u64().unwrap() >= 1, "{s:#}");
    assert!(s["target"].as_str().unwrap().ends_with("/d/demo-64m"));
    // The server got SIGTERM and copied its log on the way out; every request carried the
    // demo user's Basic credentials.
    let log = std::fs::read_to_string(&access).expect("the stand-in stopped on SIGTERM");
    assert!(!log.is_empty());
    assert!(log.lines().all(|l| l.ends_with(" demo")), "{log}");
}
