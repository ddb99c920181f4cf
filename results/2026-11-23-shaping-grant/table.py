#!/usr/bin/env python3
"""Tables of the grant-size / refill-period sweep (sweep1, sweep2) and the final run (final)."""
import glob
import json
import os
import statistics as st


def load(sweep):
    rows = {}
    for d in sorted(glob.glob(f"{sweep}/round*")):
        rnd, variant = os.path.basename(d).split("-", 1)
        for s in json.load(open(f"{d}/summary.json")):
            rows.setdefault((variant, s["scenario"]), []).append(s)
    return rows


def sweep_table(sweep, title):
    rows = load(sweep)
    print(f"### {title}\n")
    print("| variant | scenario | server CPU-s/GiB per round | median | worst p1 | worst p99 | global ratio range | SO_SNDBUF KiB |")
    print("|---|---|---|---|---|---|---|---|")
    for (variant, sc), l in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cpu = [s["server_cpu_s_per_gib"] for s in l]
        g = [s["global_ratio"] for s in l]
        print(f"| {variant} | {sc} | {' / '.join(f'{c:.2f}' for c in cpu)} | {st.median(cpu):.2f} "
              f"| {min(s['ratio_p1'] for s in l):.4f} | {max(s['ratio_p99'] for s in l):.4f} "
              f"| {min(g):.4f}–{max(g):.4f} | {l[0]['server_sndbuf_kib_mean']:.0f} |")
    print()


def final_table():
    def scen(path):
        return {s["scenario"]: s for s in json.load(open(path))}
    runs = scen("final/raw/summary.json")
    long = scen("final/raw/stalled-long/summary.json")
    print("### final: the whole benchmark on the committed binary\n")
    print("| scenario | p1 | p50 | p99 | Jain | global | server CPU % | server CPU-s/GiB | total CPU-s/GiB | server socket KiB/conn | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in runs.items():
        if name.endswith("stalled"):
            continue
        print(f"| {name} | {s['ratio_p1']:.4f} | {s['ratio_p50']:.4f} | {s['ratio_p99']:.4f} | {s['jain']:.5f} "
              f"| {s['global_ratio']:.4f} | {s['server_cpu_pct']:.1f} | {s['server_cpu_s_per_gib']:.2f} "
              f"| {s['total_cpu_s_per_gib']:.2f} | {s['server_sock_kib_per_conn']:.1f} | {s['errors']} |")
    print("\nStalled (the client reads nothing; weir shaped, nginx not), settled 5 s and 40 s:\n")
    print("| scenario | server socket KiB/conn, 5 s / 40 s | server CPU %, 5 s / 40 s | all of sockstat KiB/conn, 40 s |")
    print("|---|---|---|---|")
    for name, s in long.items():
        r = runs[name]
        print(f"| {name} | {r['server_sock_kib_per_conn']:.1f} / {s['server_sock_kib_per_conn']:.1f} "
              f"| {r['server_cpu_pct']:.1f} / {s['server_cpu_pct']:.1f} | {s['sockstat_kib_per_conn']:.1f} |")
    print()


def rounds_table():
    per = {}  # rounds 6-9 ran io_uring only
    for d in sorted(os.path.dirname(p) for p in glob.glob("rounds/round*/summary.json")):
        for s in json.load(open(f"{d}/summary.json")):
            per.setdefault(os.path.basename(d), {})[s["scenario"]] = s
    print("### rounds: shaped against unshaped, same binary, paired by round\n")
    print("| driver | shaped scenario | shaped CPU-s/GiB per round | unshaped (paced) per round | shaped ÷ unshaped per round | median ratio | total CPU-s/GiB shaped vs unshaped, medians |")
    print("|---|---|---|---|---|---|---|")
    for drv in ("uring", "epoll"):
        for sc in ("a", "a-paced"):
            rounds = [r for r in per.values() if f"{drv}-{sc}" in r]
            a = [r[f"{drv}-{sc}"] for r in rounds]
            u = [r[f"{drv}-paced"] for r in rounds]
            ratios = [x["server_cpu_s_per_gib"] / y["server_cpu_s_per_gib"] for x, y in zip(a, u)]
            ta = st.median(x["total_cpu_s_per_gib"] for x in a)
            tu = st.median(y["total_cpu_s_per_gib"] for y in u)
            print(f"| {drv} | {drv}-{sc} | {' / '.join('%.2f' % x['server_cpu_s_per_gib'] for x in a)} "
                  f"| {' / '.join('%.2f' % y['server_cpu_s_per_gib'] for y in u)} "
                  f"| {' / '.join('%.2f' % r for r in ratios)} | {st.median(ratios):.2f} | {ta:.2f} vs {tu:.2f} |")
    worst = min(s["ratio_p1"] for r in per.values() for n, s in r.items() if "-a" in n)
    worst99 = max(s["ratio_p99"] for r in per.values() for n, s in r.items() if "-a" in n)
    print(f"\nShaped scenarios over all rounds: worst p1 {worst:.4f}, worst p99 {worst99:.4f}.\n")


if __name__ == "__main__":
    sweep_table("sweep1", "sweep 1: period × grant (base = 25 ms, 16 KiB, the previous default)")
    sweep_table("sweep2", "sweep 2: 50 / 100 ms × 32 / 64 KiB, with the unshaped reference")
    if os.path.exists("final/raw/stalled-long/summary.json"):
        final_table()
    if glob.glob("rounds/round*/summary.json"):
        rounds_table()
