#!/bin/bash
# Syscall counts of the server over 10 s inside the window of one scenario.
cd /work/main
S=$1
L=/tmp/perf/$S.stat.log
target/release/weir-bench shaping --out /tmp/perf/stat-$S --scenarios $S > $L 2>&1 &
BP=$!
until grep -q "all heads" $L; do sleep 0.5; done
sleep 8
WP=$(pgrep -P $BP -x weir | head -1)
perf stat -e syscalls:sys_enter_getsockopt,syscalls:sys_enter_ioctl,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendfile64,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom -p $WP -- sleep 10 2>&1 | grep -E "syscalls|elapsed"
wait $BP
grep ratio $L
