#!/usr/bin/env bash
# weir-load against the reference tools, on one run of nginx on loopback (release build):
#   urlopen vs wrk on a 4 KiB file (requests/s), forty vs axel -n 40 on a 1 GiB file (MB/s),
#   and the concurrent connections forty holds (one process, then --processes 2).
# Usage: loadgen/bench/run.sh [OUT_DIR] [ROUNDS]
# Needs nginx, wrk, axel. Starts its own nginx in a temp dir on a free port and stops that PID only.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-loadgen/bench/results/$(date -u +%Y%m%d-%H%M%S)-$(hostname)}
ROUNDS=${2:-3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release -p weir-load >/dev/null
W=$PWD/target/release/weir-load
for t in nginx wrk axel; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

D=$(mktemp -d)
chmod 755 "$D"; mkdir -p "$D/root" "$D/tmp"; chmod 755 "$D/root"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)))
head -c 4096 /dev/urandom > "$D/root/f4k"
head -c 1073741824 /dev/urandom > "$D/root/f1g"
head -c 67108864 /dev/urandom > "$D/root/f64m"
cat > "$D/nginx.conf" <<CONF
worker_processes 2;
error_log $D/error.log;
pid $D/nginx.pid;
events { worker_connections 40000; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  open_file_cache max=100 inactive=60s;
  client_body_temp_path $D/tmp/b; proxy_temp_path $D/tmp/p; fastcgi_temp_path $D/tmp/f;
  uwsgi_temp_path $D/tmp/u; scgi_temp_path $D/tmp/s;
  server {
    listen 127.0.0.1:$PORT;
    root $D/root;
    location /slow/ { alias $D/root/; limit_rate 20k; }
  }
}
CONF
nginx -p "$D" -c "$D/nginx.conf" -g 'daemon off;' &
NGX=$!
cleanup() { kill -TERM $NGX 2>/dev/null || true; wait $NGX 2>/dev/null || true; rm -rf "$D"; rm -f "$OUT"/axel.out*; }
trap cleanup EXIT
for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
U=http://127.0.0.1:$PORT

R=$OUT/results.txt
{
  echo "# weir-load benchmark $(date -u +%FT%TZ)"
  echo "kernel $(uname -r), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "$(nginx -v 2>&1), $(wrk -v 2>&1 | head -1), $(axel -V | head -1), $(rustc -V)"
  echo "weir-load $(git rev-parse --short HEAD)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$R"

for r in $(seq 1 "$ROUNDS"); do
  wrk_rps=$(wrk -t2 -c100 -d10s "$U/f4k" | awk '/Requests\/sec/{print $2}')
  "$W" urlopen "$U/f4k" --threads 100 --workers 2 --duration 10s --no-progress --out "$OUT/urlopen-$r" >/dev/null
  wl_rps=$(python3 -c "import json;print(round(json.load(open('$OUT/urlopen-$r/summary.json'))['requests_per_sec']))")
  echo "round $r 4KiB req/s: wrk -t2 -c100 $wrk_rps | weir-load urlopen --threads 100 $wl_rps" >> "$R"

  rm -f "$OUT"/axel.out*
  # axel 2.17 sometimes crashes (SIGSEGV seen here); one retry, and say so if it fails again.
  axel_mbs=failed
  for try in 1 2; do
    rm -f "$OUT"/axel.out*
    s=$(date +%s.%N)
    if axel -q -n 40 -o "$OUT/axel.out" "$U/f1g" >/dev/null 2>&1 \
       && [ "$(stat -c %s "$OUT/axel.out")" = 1073741824 ]; then
      e=$(date +%s.%N)
      axel_mbs=$(python3 -c "print(round(1073741824/($e-$s)/1e6))")
      break
    fi
  done
  rm -f "$OUT"/axel.out*
  "$W" forty "$U/f1g" --users 1 --connections 40 --duration 10s --no-progress --out "$OUT/forty-$r" >/dev/null
  wl_mbs=$(python3 -c "import json;print(round(json.load(open('$OUT/forty-$r/summary.json'))['goodput_bytes_per_sec']/1e6))")
  echo "round $r 1GiB MB/s: axel -n 40 $axel_mbs | weir-load forty --users 1 --connections 40 $wl_mbs" >> "$R"
done

"$W" forty "$U/slow/f64m" --users 475 --connections 40 --duration 20s \
  --source 127.0.0.2-127.0.0.20 --no-progress --out "$OUT/conns-1proc" >/dev/null
"$W" forty "$U/slow/f64m" --users 875 --connections 40 --duration 25s \
  --source 127.0.0.2-127.0.0.40 --processes 2 --no-progress --out "$OUT/conns-2proc" >/dev/null
for d in conns-1proc conns-2proc; do
  python3 -c "import json;s=json.load(open('$OUT/$d/summary.json'));print('$d: max open', s['max_open_connections'], 'errors', s['errors_total'])" >> "$R"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$R"
cat "$R"
