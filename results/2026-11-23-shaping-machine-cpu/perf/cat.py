import sys, collections
want = sys.argv[1].split(',')
cats = [("recvfrom", "__sys_recvfrom"), ("ioctl", "__x64_sys_ioctl"), ("getsockopt", "__sys_getsockopt"),
        ("sendmsg", "____sys_sendmsg"), ("sendfile","do_sendfile"), ("uring_enter(other)", "__do_sys_io_uring_enter"), ("epoll_wait", "do_epoll_wait"),
        ("softirq", "handle_softirqs"), ("allocator", "weir_shaper::shaper"), ("core shaper", "weir_shaper::core"),
        ("timers/wakeups", "weir::server::worker")]
cnt = collections.Counter(); n = 0
comm=None; stack=[]
def flush():
    global n
    if comm is None or not any(comm.startswith(w) for w in want): return
    n += 1
    for name, f in cats:
        if any(f in s for s in stack):
            cnt[name] += 1; return
    cnt["other: " + (stack[0] if stack else "?")] += 1
for line in sys.stdin:
    if not line.strip():
        flush(); comm=None; stack=[]; continue
    if not line.startswith((' ', '\t')): comm = line.split()[0]
    else:
        p = line.split()
        if len(p) >= 2: stack.append(p[1])
flush()
print("samples", n)
for k, v in cnt.most_common(25): print(f"{v:5} {v/n:6.1%} {k}")
