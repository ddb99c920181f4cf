#!/usr/bin/env python3
"""CPU per GiB of the same rate with and without shaping, per round and median (run from this
directory). "total" = server + client + ksoftirqd over the window.

Usage: table.py [RAW_DIR]  (default raw/; raw-100users/ holds the uring and epoll runs at 100
users)."""
import json, os, statistics, sys

ROUNDS = (1, 2, 3)
RAW = sys.argv[1] if len(sys.argv) > 1 else "raw"
SERVERS = [s for s in ("uring", "epoll", "nginx") if os.path.exists(f"{RAW}/round1/{s}-paced.json")]


def load(r, s):
    return json.load(open(f"{RAW}/round{r}/{s}.json"))


def med(vals):
    return statistics.median(vals)


def rounds(vals, fmt="{:.2f}"):
    return " / ".join(fmt.format(v) for v in vals)


print(f"## {RAW}: CPU-s per GiB delivered, rounds 1-3 (median)\n")
print("| scenario | server shapes | client paces | MiB/s | p1 / p99 ratio (median) | TCP memory, MiB (sockstat) | server | client | ksoftirqd | total |")
print("|---|---|---|---|---|---|---|---|---|---|")
for srv in SERVERS:
    for suffix, shapes, paces in (("-paced", "no", "yes"), ("-a-paced", "yes", "yes"), ("-a", "yes", "no")):
        s = srv + suffix
        if not os.path.exists(f"{RAW}/round1/{s}.json"):
            continue
        ds = [load(r, s) for r in ROUNDS]
        gib = [d["global_bps"] * d["window_s"] / 2**30 for d in ds]
        col = lambda k: [d[k] for d in ds]
        per = lambda k: [d[k] / g for d, g in zip(ds, gib)]
        srv_ = col("server_cpu_s_per_gib")
        cli = col("client_cpu_s_per_gib")
        sirq = per("softirqd_cpu_s")
        tot = col("total_cpu_s_per_gib")
        mibs = [d["global_bps"] / 2**20 for d in ds]
        print(
            f"| {s} | {shapes} | {paces} | {med(mibs):.1f} | {med(col('ratio_p1')):.4f} / {med(col('ratio_p99')):.4f} | {med(col('sockstat_median_bytes')) / 2**20:.0f} "
            f"| {rounds(srv_)} ({med(srv_):.2f}) | {rounds(cli)} ({med(cli):.2f}) "
            f"| {rounds(sirq)} ({med(sirq):.2f}) | {rounds(tot)} ({med(tot):.2f}) |"
        )

print("\n## Shaping's cost at the same rate, same paced client: \"a-paced\" against \"paced\"\n")
print("| server | server CPU, per round | median | total CPU, per round | median |")
print("|---|---|---|---|---|")
for srv in SERVERS:
    a = [load(r, srv + "-a-paced") for r in ROUNDS]
    p = [load(r, srv + "-paced") for r in ROUNDS]
    ch = lambda k: [x[k] / y[k] - 1 for x, y in zip(a, p)]
    s, t = ch("server_cpu_s_per_gib"), ch("total_cpu_s_per_gib")
    pc = "{:+.0%}"
    print(f"| {srv} | {rounds(s, pc)} | {pc.format(med(s))} | {rounds(t, pc)} | {pc.format(med(t))} |")
