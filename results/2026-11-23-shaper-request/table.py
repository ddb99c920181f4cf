#!/usr/bin/env python3
"""Median over runs of criterion's point estimate (ns per `CoreShaper::request`), from run*.txt."""
import glob, re, statistics
est, granted = {}, {}
for f in sorted(glob.glob("run*.txt")):
    name = None
    for line in open(f):
        m = re.match(r"(request/\S+): (\d+) connections, ([\d.]+)% of requests granted", line)
        if m:
            granted[m.group(1)] = (m.group(2), m.group(3))
        m = re.match(r"^(request/\S+)", line)
        if m:
            name = m.group(1).rstrip(":")
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m and name:
            v, unit = float(m.group(1)), m.group(2)
            est.setdefault(name, []).append(v * {"ns": 1, "ps": 1e-3, "µs": 1e3, "us": 1e3}[unit])
            name = None
print("| benchmark | connections | requests granted | ns per request, runs | median |")
print("|---|---|---|---|---|")
for k, v in est.items():
    c, g = granted.get(k, ("?", "?"))
    print(f"| {k} | {c} | {g}% | {' / '.join(f'{x:.1f}' for x in v)} | {statistics.median(v):.1f} |")
