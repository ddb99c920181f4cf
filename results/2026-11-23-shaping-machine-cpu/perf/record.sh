#!/bin/bash
# One scenario under system-wide perf: 10 s of samples inside the bench's 20 s window.
cd /work/main
S=$1
L=/tmp/perf/$S.log
rm -f $L
target/release/weir-bench shaping --out /tmp/perf/$S --scenarios $S > $L 2>&1 &
BP=$!
until grep -q "all heads" $L; do sleep 0.5; if ! kill -0 $BP 2>/dev/null; then echo bench died; exit 1; fi; done
sleep 8
perf record -a -g -F 499 -o /tmp/perf/$S.data -- sleep 10 2>/tmp/perf/$S.perf.err
wait $BP
echo "$S done rc=$?"
