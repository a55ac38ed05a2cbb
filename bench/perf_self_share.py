#!/usr/bin/env python3
"""Share of one process's CPU samples whose own symbol (self time, no call
graph) is in given code: `perf record -F 4999 -- shardprep run --workers 1 ...`,
then `perf script -F pid,ip,sym | python3 bench/perf_self_share.py PATTERN...`.
The process with the most samples (the worker) is taken. Prints the samples,
the matching share and the top matching symbols."""

import collections
import sys

per_pid = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    parts = line.split(None, 2)
    if len(parts) == 3 and parts[0].isdigit():
        per_pid[parts[0]][parts[2].strip()] += 1
pid = max(per_pid, key=lambda p: sum(per_pid[p].values()))
syms = per_pid[pid]
total = sum(syms.values())
hit = {s: n for s, n in syms.items() if any(p in s for p in sys.argv[1:])}
n = sum(hit.values())
print(f"pid {pid}: {total} samples; {n} ({100 * n / total:.2f}%) in {' '.join(sys.argv[1:])}")
for s, k in sorted(hit.items(), key=lambda x: -x[1])[:12]:
    print(f"  {k:6d} {100 * k / total:6.3f}%  {s[:110]}")
