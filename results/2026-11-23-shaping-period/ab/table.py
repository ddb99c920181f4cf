#!/usr/bin/env python3
"""Paired A/B of the refill period (run from this directory): CPU-s/GiB per round and medians."""
import json, statistics
rows = {}
for r in (1, 2, 3):
    for ms in (10, 25):
        for s in ("uring-a", "epoll-a"):
            d = json.load(open(f"round{r}-{ms}ms/{s}.json"))
            rows.setdefault((s, ms), []).append(d["server_cpu_s_per_gib"])
print("| scenario | 10 ms, rounds 1-3 | 25 ms, rounds 1-3 | median 10 ms | median 25 ms | change |")
print("|---|---|---|---|---|---|")
for s in ("uring-a", "epoll-a"):
    a, b = rows[(s, 10)], rows[(s, 25)]
    ma, mb = statistics.median(a), statistics.median(b)
    f = lambda v: " / ".join(f"{x:.2f}" for x in v)
    print(f"| {s} | {f(a)} | {f(b)} | {ma:.2f} | {mb:.2f} | {(mb/ma-1)*100:+.0f}% |")
