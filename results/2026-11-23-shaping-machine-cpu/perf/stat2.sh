#!/bin/bash
# recvfrom calls and cache misses of the client (the bench process) over 10 s of the window.
cd /work/main
S=$1
L=/tmp/perf/$S.stat2.log
target/release/weir-bench shaping --out /tmp/perf/stat2-$S --scenarios $S > $L 2>&1 &
BP=$!
until grep -q "all heads" $L; do sleep 0.5; done
sleep 8
perf stat -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,task-clock -p $BP -- sleep 10 2>&1 | grep -E "syscalls|task-clock"
wait $BP
grep ratio $L
