#!/usr/bin/env python3
"""Medians over both batches (runs.csv + repeat/runs.csv): the README's main table."""
import csv
import statistics as st
from pathlib import Path

here = Path(__file__).parent
rows = list(csv.DictReader(open(here / "runs.csv"))) + list(csv.DictReader(open(here / "repeat/runs.csv")))
groups = {}
for r in rows:
    groups.setdefault((r["method"], int(r["chunk"]), int(r["conns"])), []).append(r)


def h(c):
    return f"{c // 2**20}M" if c % 2**20 == 0 else f"{c // 1024}K"


def per_gib(rs, key):
    return st.median(float(r[key]) * 2**30 / int(r["bytes"]) for r in rs)


print("| method | chunk | conns | median GB/s (n=10) | batch 1 / batch 2 | CPU s/GiB whole process | sender thread | reader thread |")
print("|---|---|---|---|---|---|---|---|")
for (m, c, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1])):
    gb = [float(r["gb_per_s"]) for r in rs]
    print(
        f"| {m} | {h(c)} | {n} | **{st.median(gb):.2f}** | {st.median(gb[:5]):.2f} / {st.median(gb[5:]):.2f} "
        f"| {per_gib(rs, 'process_cpu_s'):.3f} | {per_gib(rs, 'sender_cpu_s'):.3f} | {per_gib(rs, 'reader_cpu_s'):.3f} |"
    )
