#!/bin/sh
# Full-speed reader throughput: curl of a 1 GiB item from weir (unlimited user), 3 runs.
# Usage: reader.sh WEIR_BINARY [--driver uring|epoll]
set -e
WEIR=$(realpath "$1"); shift
T=$(mktemp -d /tmp/weir-reader-XXXX)
D=$T/data
echo wonderland | "$WEIR" user add alice --password-stdin --data-dir "$D" >/dev/null
head -c 1073741824 /dev/urandom > "$T/big.bin"
"$WEIR" item add big "$T/big.bin" --data-dir "$D" >/dev/null
rm "$T/big.bin"
"$WEIR" cart add alice big --data-dir "$D" >/dev/null
WEIR_LOG=warn "$WEIR" serve --data-dir "$D" --listen 127.0.0.1:0 "$@" > "$T/out" 2>/dev/null &
PID=$!
while ! grep -q "listening on" "$T/out"; do sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$T/out" | head -n 1)
grep "listening on" "$T/out"
for i in 1 2 3; do
  curl -s -u alice:wonderland -o /dev/null -w "run $i: %{size_download} bytes in %{time_total} s = %{speed_download} B/s\n" "$URL/d/big"
done
kill -TERM $PID; wait $PID || true
rm -rf "$T"
