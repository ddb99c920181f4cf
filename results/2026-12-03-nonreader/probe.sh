#!/bin/sh
# quick probe: one curl of a 512 MiB item, ss tb samples
set -e
WEIR=$1; shift
T=$(mktemp -d /tmp/weir-probe-XXXX); D=$T/data
echo wonderland | "$WEIR" user add alice --password-stdin --data-dir "$D" >/dev/null
head -c 536870912 /dev/zero > "$T/big.bin"
"$WEIR" item add big "$T/big.bin" --data-dir "$D" >/dev/null
"$WEIR" cart add alice big --data-dir "$D" >/dev/null
WEIR_LOG=warn "$WEIR" serve --data-dir "$D" --listen 127.0.0.1:0 "$@" > "$T/out" 2>/dev/null &
PID=$!
while ! grep -q "listening on" "$T/out"; do sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$T/out" | head -n 1); PORT=${URL##*:}
( for i in $(seq 1 8); do ss -tmnH state established "sport = :$PORT" | grep -o 'tb[0-9]*' | tr '\n' ' '; echo; sleep 0.03; done ) &
for i in 1 2 3; do curl -s -u alice:wonderland -o /dev/null -w "%{speed_download}\n" "$URL/d/big"; done
wait %2 2>/dev/null || true
kill -TERM $PID; wait $PID || true
rm -rf "$T"
