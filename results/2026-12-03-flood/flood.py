#!/usr/bin/env python3
"""Wrong-password flood against one or more weir binaries, in one run (issue 14, point 4).

For each binary: a fresh data directory (alice, bob, carol, 1,000 users u0..u999, a 4 KiB item
in every cart), `weir serve` on 127.0.0.1, then
  1. 1,000 distinct logins (4 clients), then RssAnon of the server;
  2. a flood: 500 connections from 127.0.0.1 pipelining wrong Basic passwords for alice (4 in
     flight each, a new guess each, reconnecting when closed), in a child process at nice 19
     (the attacker is another host);
  3. during the flood, from 127.0.0.2/127.0.0.3: bob's first (new) login, then 100 rounds of
     a signed-link request and a request by carol (logged in before the flood), 30 ms apart
     (longer than the 2 s cart-grant cache), each on a fresh connection;
  4. p50/p99 of the probes, the flood's answers by status, RssAnon.

Usage: flood.py BIN [BIN...]   (e.g. /work/before-bin/weir target/release/weir)
"""
import os, re, socket, sqlite3, subprocess, sys, tempfile, threading, time, base64

CONNS = 500
ROUNDS = 100


def run(binary, data, *args, stdin=None):
    return subprocess.run([binary, *args, "--data-dir", data], input=stdin, capture_output=True,
                          text=True, check=True).stdout


def basic(cred):
    return "Authorization: Basic " + base64.b64encode(cred.encode()).decode() + "\r\n"


def timed(source, addr, request):
    t = time.perf_counter()
    s = socket.socket()
    s.bind((source, 0))
    s.connect(addr)
    s.sendall(request.encode())
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - t


def get(target, extra=""):
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"


FLOOD_CHILD = r'''
import asyncio, base64, os, sys, re
host, port, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
async def one(c):
    n = 0
    while True:
        try:
            r, w = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01); continue
        def send(k):
            nonlocal n
            out = []
            for _ in range(k):
                n += 1
                b = base64.b64encode(f"alice:guess-{c}-{n}".encode()).decode()
                out.append(f"GET /d/song HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {b}\r\n\r\n")
            w.write("".join(out).encode())
        send(4)
        buf = b""
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                buf += b
                found = re.findall(rb"HTTP/1\.1 (\d\d\d)", buf)
                for st in found:
                    counts[st] = counts.get(st, 0) + 1
                if found:
                    buf = buf[buf.rfind(b"HTTP/1.1 ") + 12:]
                    send(len(found))
                else:
                    buf = buf[-16:]
        except OSError:
            pass
        w.close()
async def main():
    tasks = [asyncio.create_task(one(c)) for c in range(conns)]
    async def report():
        while True:
            await asyncio.sleep(0.5)
            print(" ".join(f"{k.decode()}={v}" for k, v in sorted(counts.items())), flush=True)
    tasks.append(asyncio.create_task(report()))
    await asyncio.gather(*tasks)
asyncio.run(main())
'''


def rss_anon_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])


def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, -(-len(xs) * p // 100) - 1)]


def measure(binary):
    tmp = tempfile.mkdtemp(prefix="weir-flood-")
    data = os.path.join(tmp, "data")
    item = os.path.join(tmp, "song.bin")
    with open(item, "wb") as f:
        f.write(os.urandom(4096))
    for user, pw in [("alice", "wonderland"), ("bob", "builder"), ("carol", "singer"),
                     ("u0", "pw-for-all")]:
        run(binary, data, "user", "add", user, "--password-stdin", stdin=pw + "\n")
    run(binary, data, "item", "add", "song", item)
    db = sqlite3.connect(os.path.join(data, "weir.db"))
    (h,) = db.execute("SELECT password_hash FROM users WHERE name='u0'").fetchone()
    now = int(time.time())
    db.executemany("INSERT OR IGNORE INTO users(name, password_hash, rate, created_at) VALUES (?,?,NULL,?)",
                   [(f"u{i}", h, now) for i in range(1000)])
    db.executemany("INSERT OR IGNORE INTO cart(user, item, added_at) VALUES (?, 'song', ?)",
                   [(u, now) for u in ["alice", "bob", "carol"] + [f"u{i}" for i in range(1000)]])
    db.commit(); db.close()
    link = run(binary, data, "token", "--user", "alice", "--item", "song", "--ttl", "3600").strip()
    srv = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    addr = None
    for line in srv.stdout:
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
            break
    threading.Thread(target=lambda: [None for _ in srv.stdout], daemon=True).start()
    res = {"binary": binary}
    try:
        # 1. 1,000 distinct logins.
        def logins(k):
            for i in range(k, 1000, 4):
                st, _ = timed(f"127.0.1.{10 + k}", addr, get("/d/song", basic(f"u{i}:pw-for-all")))
                assert st == 200, (i, st)
        ts = [threading.Thread(target=logins, args=(k,)) for k in range(4)]
        t0 = time.perf_counter()
        [t.start() for t in ts]; [t.join() for t in ts]
        res["logins_s"] = time.perf_counter() - t0
        time.sleep(1)
        res["rss_anon_kib_after_1000_logins"] = rss_anon_kib(srv.pid)
        carol = get("/d/song", basic("carol:singer"))
        assert timed("127.0.0.3", addr, carol)[0] == 200
        # 2. the flood.
        flood = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", FLOOD_CHILD,
                                  addr[0], str(addr[1]), str(CONNS)],
                                 stdout=subprocess.PIPE, text=True)
        first = flood.stdout.readline()  # half a second in
        t0 = time.perf_counter()
        while (sum(int(x.split("=")[1]) for x in flood.stdout.readline().split()) < 100
               and time.perf_counter() - t0 < 10):
            pass
        # 3. probes.
        res["flood_before_probes"] = first.strip()
        st, res["new_login_s"] = timed("127.0.0.2", addr, get("/d/song", basic("bob:builder")))
        res["new_login_status"] = st
        links, cached, statuses = [], [], {}
        t0 = time.perf_counter()
        for _ in range(ROUNDS):
            if time.perf_counter() - t0 > 60:
                break  # the old binary: seconds per probe
            for name, req, xs in (("link", get(link), links), ("cached", carol, cached)):
                st, t = timed("127.0.0.3", addr, req)
                statuses[(name, st)] = statuses.get((name, st), 0) + 1
                xs.append(t)
            time.sleep(0.03)
        last = ""
        flood.terminate()
        for line in flood.stdout:
            last = line
        flood.wait()
        res["probe_statuses"] = {f"{k[0]} {k[1]}": v for k, v in statuses.items()}
        res["flood_answers"] = last.strip() or first.strip()
        for name, xs in (("link", links), ("cached", cached)):
            res[f"{name}_p50_ms"] = round(pct(xs, 50) * 1000, 1)
            res[f"{name}_p99_ms"] = round(pct(xs, 99) * 1000, 1)
        res["new_login_s"] = round(res["new_login_s"], 3)
        res["logins_s"] = round(res["logins_s"], 1)
        res["rss_anon_kib_after_flood"] = rss_anon_kib(srv.pid)
    finally:
        srv.terminate(); srv.wait()
    return res


if __name__ == "__main__":
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {os.uname().release}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()}")
    for b in sys.argv[1:]:
        r = measure(b)
        for k, v in r.items():
            print(f"{k}: {v}")
        print(flush=True)
