#!/bin/bash
cd /work/main
B=/tmp/ab2
V=(base:25:16384 p100:100:16384 g32:25:32768 p100g32:100:32768)
for r in 1 2 3; do
  if [ $((r % 2)) = 0 ]; then ORDER=$(printf '%s\n' "${V[@]}" | tac); else ORDER=$(printf '%s\n' "${V[@]}"); fi
  for v in $ORDER; do
    IFS=: read name per grant <<< "$v"
    uptime >> $B/uptime.txt
    WEIR_PERIOD_MS=$per WEIR_MIN_GRANT=$grant target/release/weir-bench shaping --weir /tmp/weir-env \
      --out $B/round$r-$name --scenarios uring-a,epoll-a,uring-b >> $B/log.txt 2>&1
  done
done
echo done > $B/DONE
