#!/bin/bash
cd /work/main
B=/tmp/ab3
V=(p50g32:50:32768 p100g32:100:32768 p50g64:50:65536 p100g64:100:65536)
for r in 1 2; do
  if [ $((r % 2)) = 0 ]; then ORDER=$(printf '%s\n' "${V[@]}" | tac); else ORDER=$(printf '%s\n' "${V[@]}"); fi
  uptime >> $B/uptime.txt
  target/release/weir-bench shaping --weir /tmp/weir-env --out $B/round$r-unshaped --scenarios uring-paced,epoll-paced >> $B/log.txt 2>&1
  for v in $ORDER; do
    IFS=: read name per grant <<< "$v"
    uptime >> $B/uptime.txt
    WEIR_PERIOD_MS=$per WEIR_MIN_GRANT=$grant target/release/weir-bench shaping --weir /tmp/weir-env \
      --out $B/round$r-$name --scenarios uring-a,epoll-a,uring-b >> $B/log.txt 2>&1
  done
done
echo done > $B/DONE
