#!/usr/bin/env python3
"""Paired A/B of the TCP_INFO poll skip (run from this directory): server CPU-s/GiB per round
(before and after alternated, order swapped every round), medians, and the per-round change."""
import json, os, statistics
SC = ("uring-a", "epoll-a", "uring-a-paced")
ROUNDS = [r for r in range(1, 10) if os.path.exists(f"round{r}-after")]
rows = {}
for r in ROUNDS:
    for v in ("before", "after"):
        for s in SC:
            d = json.load(open(f"round{r}-{v}/{s}.json"))
            rows.setdefault((s, v), []).append(d)
f = lambda v, fmt="{:.2f}": " / ".join(fmt.format(x) for x in v)
print(f"| scenario | before, rounds {ROUNDS[0]}-{ROUNDS[-1]} | after | median before | median after | per-round change | median change | p1 / p99 after (worst) |")
print("|---|---|---|---|---|---|---|---|")
for s in SC:
    a = [d["server_cpu_s_per_gib"] for d in rows[(s, "before")]]
    b = [d["server_cpu_s_per_gib"] for d in rows[(s, "after")]]
    ch = [y / x - 1 for x, y in zip(a, b)]
    p1 = min(d["ratio_p1"] for d in rows[(s, "after")])
    p99 = max(d["ratio_p99"] for d in rows[(s, "after")])
    print(f"| {s} | {f(a)} | {f(b)} | {statistics.median(a):.2f} | {statistics.median(b):.2f} "
          f"| {f(ch, '{:+.0%}')} | {statistics.median(ch):+.0%} | {p1:.4f} / {p99:.4f} |")
