#!/usr/bin/env python3
"""Samples per process name, and the share of each under tcp_write_xmit (a socket's queued data
being transmitted), from `perf script` output on stdin."""
import sys, collections
tot = collections.Counter(); xmit = collections.Counter()
comm = None; stack = []
def flush():
    if comm is None: return
    tot[comm] += 1
    if any('tcp_write_xmit' in f for f in stack): xmit[comm] += 1
for line in sys.stdin:
    if not line.strip():
        flush(); comm = None; stack = []; continue
    if not line.startswith((' ', '\t')):
        comm = line.split()[0]
        c = comm
        comm = c.split('/')[0] if c.startswith(('ksoftirqd', 'kworker', 'swapper')) else c
    else:
        parts = line.split()
        if len(parts) >= 2: stack.append(parts[1])
flush()
busy = sum(v for k, v in tot.items() if k != 'swapper')
print(f"non-idle samples {busy}, idle {tot['swapper']}")
for k, v in tot.most_common(12):
    if k == 'swapper':
        continue
    print(f"{k:20} {v:7} ({v/max(busy,1):.1%} of non-idle)  under tcp_write_xmit {xmit[k]:6} ({xmit[k]/v:.0%})")
