#!/usr/bin/env python3
"""Kernel TCP memory held by clients that never read (issue 14, point 5).

Starts `weir serve` on a fresh data dir with one unlimited user and a large item, opens N
connections that each send one GET for the item and never read, waits until the kernel's TCP
memory stops growing, then reports:

- /proc/net/sockstat `TCP: mem` (pages x 4096) minus the baseline before the connections: both
  ends of loopback together;
- the server's sockets: Send-Q and skmem (wmem_queued `w`, send buffer `tb`) from `ss -tmn`;
- the client's sockets: Recv-Q and skmem `r` (receive memory).

Usage: nonreader.py WEIR_BINARY [CONNS] [ITEM_MIB] [--driver uring|epoll] [--rcvbuf BYTES]

--rcvbuf: the clients set SO_RCVBUF (a hostile client inflating its receive buffer so that its
TCP acknowledges more without reading; capped by net.core.rmem_max).
"""

import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


def sockstat_tcp_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                m = re.search(r"mem (\d+)", line)
                return int(m.group(1))
    return 0


def ss(filter_expr):
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", filter_expr],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fields = line.split()
        skmem = ""
        m = re.search(r"skmem:\(([^)]*)\)", line)
        if not m and i + 1 < len(lines) and "skmem" in lines[i + 1]:
            m = re.search(r"skmem:\(([^)]*)\)", lines[i + 1])
            i += 1
        if m:
            skmem = m.group(1)
        mem = {}
        for part in skmem.split(","):
            k = re.match(r"([a-z_]+)(\d+)", part)
            if k:
                mem[k.group(1)] = int(k.group(2))
        rows.append((int(fields[0]), int(fields[1]), mem))
        i += 1
    return rows


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    driver = "uring"
    if "--driver" in sys.argv:
        driver = sys.argv[sys.argv.index("--driver") + 1]
        args.remove(driver)
    rcvbuf = None
    if "--rcvbuf" in sys.argv:
        rcvbuf = sys.argv[sys.argv.index("--rcvbuf") + 1]
        args.remove(rcvbuf)
        rcvbuf = int(rcvbuf)
    weir = os.path.abspath(args[0])
    conns = int(args[1]) if len(args) > 1 else 1000
    item_mib = int(args[2]) if len(args) > 2 else 64
    tmp = tempfile.mkdtemp(prefix="weir-nonreader-")
    data = os.path.join(tmp, "data")

    def cli(*a, stdin=None):
        subprocess.run([weir, *a, "--data-dir", data], input=stdin, text=True, check=True,
                       capture_output=True)

    cli("user", "add", "alice", "--password-stdin", stdin="wonderland\n")
    path = os.path.join(tmp, "big.bin")
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(item_mib):
            f.write(chunk)
    cli("item", "add", "big", path)
    cli("cart", "add", "alice", "big")

    srv = subprocess.Popen(
        [weir, "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--driver", driver],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "WEIR_LOG": "warn"},
    )
    addr = None
    for line in srv.stdout:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            print(line.strip())
            break
    host, port = addr.rsplit(":", 1)
    port = int(port)
    auth = base64.b64encode(b"alice:wonderland").decode()
    req = (f"GET /d/big HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\r\n").encode()

    time.sleep(0.5)
    base = sockstat_tcp_pages()
    socks = []
    for _ in range(conns):
        if rcvbuf:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.connect((host, port))
        else:
            s = socket.create_connection((host, port))
        s.sendall(req)
        socks.append(s)

    # Wait until TCP memory is stable for 3 s (bounded at 60 s).
    stable_since, last, start = time.time(), -1, time.time()
    while time.time() - start < 60:
        now = sockstat_tcp_pages()
        if now != last:
            last, stable_since = now, time.time()
        elif time.time() - stable_since >= 3:
            break
        time.sleep(0.5)

    pages = sockstat_tcp_pages()
    server = ss(f"sport = :{port}")
    client = ss(f"dport = :{port}")
    mib = 1 << 20
    print(f"weir: {weir}")
    print(f"driver: {driver}  connections: {conns}  item: {item_mib} MiB  client SO_RCVBUF: {rcvbuf}")
    print(f"sockstat TCP mem: baseline {base} pages, now {pages} pages: "
          f"+{(pages - base) * 4096 / mib:.1f} MiB total (both ends of loopback)")
    s_sendq = sum(r[1] for r in server)
    s_w = sum(r[2].get("w", 0) for r in server)
    s_tb = [r[2].get("tb", 0) for r in server]
    c_recvq = sum(r[0] for r in client)
    c_r = sum(r[2].get("r", 0) for r in client)
    print(f"server sockets: {len(server)}, Send-Q {s_sendq / mib:.1f} MiB "
          f"(max {max((r[1] for r in server), default=0)} B per connection), "
          f"wmem_queued {s_w / mib:.1f} MiB, sndbuf tb min/max {min(s_tb, default=0)}/{max(s_tb, default=0)}")
    print(f"client sockets: {len(client)}, Recv-Q {c_recvq / mib:.1f} MiB, "
          f"rmem_alloc {c_r / mib:.1f} MiB")
    print(f"per connection: total {(pages - base) * 4096 / max(conns, 1) / 1024:.0f} KiB, "
          f"server wmem_queued {s_w / max(len(server), 1) / 1024:.0f} KiB")
    for s in socks:
        s.close()
    srv.terminate()
    srv.wait(timeout=30)


if __name__ == "__main__":
    main()
