#!/usr/bin/env python3
"""Share of one process's CPU samples spent in given code (inclusive), from
`perf script` output of a `perf record --call-graph dwarf` profile.

  perf script -i perf.data -F pid,tid,comm,period,sym --no-inline | \
      python3 bench/perf_share.py [--pid PID] PATTERN...

Without --pid the process with the most samples (a `run --workers 1`'s worker) is
taken. A sample counts for a pattern when any frame of its stack contains it; it
counts for "any" when one of the patterns matches. Prints samples and shares.
"""

import argparse
import collections
import sys


def samples(lines):
    """(pid, comm, [frames]) per sample: a header line, then indented frames."""
    head, frames = None, []
    for line in lines:
        if not line.strip():
            if head:
                yield head[0], head[1], frames
            head, frames = None, []
        elif line[0] in " \t" and head:
            frames.append(line.strip().split(" ", 1)[-1])
        else:
            parts = line.split()
            head = (parts[1].split("/")[0], parts[0])
            frames = []
    if head:
        yield head[0], head[1], frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid")
    ap.add_argument("patterns", nargs="+")
    a = ap.parse_args()
    per_pid = collections.defaultdict(list)
    for pid, comm, frames in samples(sys.stdin):
        per_pid[pid].append((comm, frames))
    pid = a.pid or max(per_pid, key=lambda p: len(per_pid[p]))
    got = per_pid[pid]
    total = len(got)
    hits = collections.Counter()
    for _, frames in got:
        matched = {p for p in a.patterns for f in frames if p in f}
        for p in matched:
            hits[p] += 1
        if matched:
            hits["any"] += 1
    print(f"pid {pid}: {total} samples")
    for p in a.patterns + ["any"]:
        print(f"  {hits[p]:7d}  {100 * hits[p] / max(total, 1):6.2f}%  {p}")


if __name__ == "__main__":
    main()
