#!/usr/bin/env python3
"""Prints the README's tables from raw/**/summary.json (run from this directory)."""
import json, os, sys

def load(d):
    p = os.path.join(d, "summary.json")
    return {r["scenario"]: r for r in json.load(open(p))} if os.path.exists(p) else {}

runs = {
    "all": load("raw"),
    "stalled, settle 40 s": load("raw/stalled-long"),
}

def ok(c):
    return "yes" if c else "**no**"

print("| run | scenario | server | per-user ratio p1 / p50 / p99 | Jain | global held (MiB/s, ratio) | server CPU (% of a core) | CPU-s per GiB | client CPU-s per GiB | total CPU-s per GiB (server + client + ksoftirqd) | TCP mem per conn, sockstat (KiB) | server-side sockets (KiB each; SO_SNDBUF as reported) | 503 retries |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for run, rs in runs.items():
    for name, r in rs.items():
        g = r["global_bps"] / 2**20
        cpu_gib = r["server_cpu_s_per_gib"]
        cpu_gib = "–" if cpu_gib is None or cpu_gib != cpu_gib else f"{cpu_gib:.2f}"
        cl_gib = r.get("client_cpu_s_per_gib")
        cl_gib = "–" if cl_gib is None or cl_gib != cl_gib else f"{cl_gib:.2f}"
        tot = r.get("total_cpu_s_per_gib")
        tot = "–" if tot is None or tot != tot else f"{tot:.2f}"
        ratios = "–" if r["global_bps"] == 0 else f'{r["ratio_p1"]:.4f} / {r["ratio_p50"]:.4f} / {r["ratio_p99"]:.4f}'
        jain = "–" if r["global_bps"] == 0 else f'{r["jain"]:.5f}'
        glob = "0 (stalled)" if r["global_bps"] == 0 else f'{g:.2f} ({r["global_ratio"]:.4f})'
        print(f'| {run} | {name} | {r["server"]} | {ratios} | {jain} | {glob} | {r["server_cpu_pct"]:.1f} | {cpu_gib} | {cl_gib} | {tot} | {r["sockstat_kib_per_conn"]:.1f} | {r["server_sock_kib_per_conn"]:.2f} ({r["server_sndbuf_kib_mean"]:.0f}) | {r["retries_503"]} |')

print()
print("Targets (shaped weir scenarios):")
print()
print("| run | scenario | p1 ≥ 0.97 | p99 ≤ 1.03 | Jain ≥ 0.99 | global within 1% | server CPU-s/GiB vs paced unshaped, same driver (target ≤ +5%; a-paced: the same client on both sides) |")
print("|---|---|---|---|---|---|---|")
for run, rs in runs.items():
    for name, r in rs.items():
        if not name.split("-")[1] in ("a", "b"):
            continue
        drv = name.split("-")[0]
        ref = rs.get(f"{drv}-paced")
        cpu = "–"
        if name.endswith("-b") and drv != "nginx":
            cpu = f'{r["server_cpu_s_per_gib"]:.2f}; no 25 MiB/s unshaped reference run'
        elif ref and drv != "nginx":
            d = r["server_cpu_s_per_gib"] / ref["server_cpu_s_per_gib"] - 1
            cpu = f'{r["server_cpu_s_per_gib"]:.2f} vs {ref["server_cpu_s_per_gib"]:.2f}: {d*100:+.0f}% {ok(d <= 0.05)}'
        print(f'| {run} | {name} | {r["ratio_p1"]:.4f} {ok(r["ratio_p1"] >= 0.97)} | {r["ratio_p99"]:.4f} {ok(r["ratio_p99"] <= 1.03)} | {r["jain"]:.5f} {ok(r["jain"] >= 0.99)} | {r["global_ratio"]:.4f} {ok(abs(r["global_ratio"] - 1) <= 0.01)} | {cpu} |')
