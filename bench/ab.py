#!/usr/bin/env python3
"""Side-by-side driver for bench/ab.sh (run that: it makes the data and sets the
environment read below): `shardprep run` of several labelled variants
(`LABEL=BINARY[:extra flags]`) on the same shards, interleaved per repetition with
the order rotated, each run after the same reset as bench.py (outputs cleared,
`sync`, caches dropped and inputs read back, wait for a quiet machine).

Per run it records wall time, the `sync` after it (+flush), CPU of the process tree,
others' CPU (noise), and peak RSS:
  - workers / coordinator: the largest `VmHWM` (the kernel's own high-water mark of
    resident memory) read from /proc/<pid>/status of each process in the tree, sampled
    every AB_SAMPLE_MS; a worker is a descendant whose command line has `worker`.
    Because VmHWM is a high-water mark, sampling misses only growth in the last
    interval before a process exits (workers are idle then: waiting for `done`);
  - tree: `/usr/bin/time %M` (ru_maxrss of wait4: the largest max-RSS of any process of
    the tree, the coordinator included; it cannot tell a worker from the coordinator);
  - report: `resources.worker_peak_rss_bytes` of OUT/report.json (the workers' own VmHWM
    at their last report), when the version writes it.
"""

import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402 - the helpers of the main harness (same cache/idle treatment)

BENCH_DIR = B.BENCH_DIR
WORK = B.WORK
REPS = int(os.environ.get("AB_REPS", os.environ.get("BENCH_REPS", "3")))
# Per-set repetitions, e.g. AB_REPS_small=2.
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 1)))
RESULTS = os.environ.get("AB_RESULTS", os.path.join(BENCH_DIR, "AB-RESULTS.md"))
SAMPLE_S = float(os.environ.get("AB_SAMPLE_MS", "50")) / 1000
QUICK = B.QUICK
# Deleting ~300k files per kept small-set output takes minutes after a cache drop (the
# inodes must be read back): AB_RM_AT_END=0 leaves them in WORK/ab-later/ for the caller
# (ab.sh deletes them after the results are written). Below AB_MIN_FREE_GB free, the kept
# outputs are deleted at once (with a warning).
RM_AT_END = os.environ.get("AB_RM_AT_END", "1") == "1"
# AB_FRESH_FS=1 (root): every run writes into a new ext4 made for it (a sparse image file in
# WORK, loop device with direct I/O, so writes reach the disk once), unmounted after the
# run's flush and deleted as one file. Why: on a filesystem mounted with `discard`, deleting
# ~300k output files after a cache drop ran at 400-650 files/s (10+ minutes per output), and
# deleting them just before a run slows that run's file creation; a fresh filesystem gives
# every run the same empty, unpolluted target and costs seconds.
FRESH_FS = os.environ.get("AB_FRESH_FS", "0") == "1"
FS_GB = int(os.environ.get("AB_FS_GB", "6"))
FS_INODES = int(os.environ.get("AB_FS_INODES", "600000"))
MIN_FREE_GB = float(os.environ.get("AB_MIN_FREE_GB", "8"))


TAR = "@tar"  # a variant `LABEL=@tar`: the `tar xf` loop of bench.py instead of a shardprep binary
# A variant `LABEL=@floor:N`: bench/create_floor.c creating only the output's files (names and
# sizes of a shardprep output of the set) on N threads, nothing read, parsed, checked or fenced.
FLOOR = "@floor"


def parse_variants(spec):
    """'LABEL=BINARY[:flags]' items separated by ';' (or newlines); BINARY `@tar` is the
    `tar xf` loop (every shard into OUT/data), the floor issue 27 compares with."""
    out = []
    for item in spec.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        label, sep, rest = item.partition("=")
        if not sep or not label:
            sys.exit(f"bad variant {item!r}: want LABEL=BINARY[:extra flags]")
        binary, _, flags = rest.partition(":")
        if binary.strip() == TAR:
            out.append({"label": label, "bin": TAR, "flags": []})
            continue
        if binary.strip() == FLOOR:
            threads = flags.strip() or str(WORKERS)
            if not threads.isdigit() or int(threads) < 1:
                sys.exit(f"variant {label}: want {FLOOR}:THREADS, got {rest!r}")
            out.append({"label": label, "bin": FLOOR, "flags": [], "threads": threads})
            continue
        binary = os.path.abspath(binary)
        if not os.access(binary, os.X_OK):
            sys.exit(f"variant {label}: no executable at {binary}")
        out.append({"label": label, "bin": binary, "flags": shlex.split(flags)})
    if len({v["label"] for v in out}) != len(out):
        sys.exit("variant labels must be unique")
    return out


def binary_id(path):
    """Short sha256 of the binary and the commit noted beside it (`<bin>.commit`)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    commit = ""
    try:
        with open(path + ".commit") as f:
            commit = f.read().strip()
    except OSError:
        pass
    return h.hexdigest()[:12], commit


def image_stats(set_dir):
    """Images (non-JSON members) and their bytes in the set's shards (cached)."""
    st = B.shard_stats(set_dir)
    cache = os.path.join(set_dir, "ab-stats.json")
    if os.path.exists(cache):
        with open(cache) as f:
            got = json.load(f)
        if got.get("key") == st["key"]:
            return got
    images = image_bytes = 0
    for t in B.shard_paths(os.path.join(set_dir, "shards")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.isfile() and not m.name.endswith(".json"):
                    images += 1
                    image_bytes += m.size
    got = dict(st, images=images, image_bytes=image_bytes)
    with open(cache, "w") as f:
        json.dump(got, f)
    return got


# ------------------------------------------------------------- RSS sampling


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    return out


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


class Sampler(threading.Thread):
    """Reads VmHWM of every process under `root` until stopped; keeps the largest per pid.
    A process whose command line has `worker` is a worker, one with `run` the coordinator."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.peak = {}  # pid -> KiB
        self.kind = {}  # pid -> "coordinator" | "worker" | "other"

    def run(self):
        while not self.stop.is_set():
            todo = [self.root]
            while todo:
                pid = todo.pop()
                if pid not in self.kind:
                    argv = cmdline(pid)
                    if not argv:
                        continue
                    self.kind[pid] = ("worker" if b"worker" in argv else
                                      "coordinator" if b"run" in argv else "other")
                kib = hwm_kib(pid)
                if kib is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0), kib)
                todo.extend(children(pid))
            self.stop.wait(SAMPLE_S)

    def max_of(self, kind):
        xs = [v for p, v in self.peak.items() if self.kind.get(p) == kind]
        return max(xs) if xs else None

    def count(self, kind):
        return sum(1 for p in self.peak if self.kind.get(p) == kind)


def timed_run(argv, log_path):
    """Runs argv; returns wall s, exit code, CPU (user, sys) of the tree, tree max-RSS KiB, sampler.

    CPU and tree max-RSS come from GNU time (`%U %S %M`: wait4 of its child, which waits
    for the workers). Not from our own wait4: a child forked from this Python process is
    charged Python's resident size when it execs (the kernel keeps the old mm's high-water
    mark), which would hide anything smaller. Without /usr/bin/time: wait4 here, tree RSS unknown."""
    rss_file = log_path + ".rusage"
    full = [B.GNU_TIME, "-f", "%M %U %S", "-o", rss_file] + argv if B.GNU_TIME else argv
    with open(log_path, "ab") as logf:
        logf.write(("$ " + shlex.join(argv) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        s = Sampler(p.pid)
        s.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        s.stop.set()
        s.join()
    rc = os.waitstatus_to_exitcode(status)
    cpu, tree_rss = (ru.ru_utime, ru.ru_stime), None
    if B.GNU_TIME:
        try:
            with open(rss_file) as f:
                # GNU time prefixes "Command exited with non-zero status N" on failure.
                parts = [ln for ln in f.read().splitlines() if ln.strip()][-1].split()
            tree_rss, cpu = int(parts[0]), (float(parts[1]), float(parts[2]))
        except (OSError, ValueError, IndexError):
            pass
    return wall, rc, cpu, tree_rss, s


def ensure_floor_list(set_dir, shards_dir, variants, trash, logs):
    """The names and sizes @floor creates: from an untimed run of the last shardprep variant
    when the set has no list yet (its output is left in `trash`, deleted with the others: a
    large delete just before a timed run would slow it)."""
    if os.path.exists(B.floor_list_path(set_dir)):
        return
    sp = [v for v in variants if v["bin"] not in (TAR, FLOOR)]
    if not sp:
        sys.exit(f"{FLOOR} needs a file list ({B.floor_list_path(set_dir)}): add a shardprep variant or run bench/run.sh once")
    out = os.path.join(trash, "floor-list-source")
    B.log(f"no {B.floor_list_path(set_dir)}: an untimed run of {sp[-1]['label']} writes it")
    r = run_variant(sp[-1], shards_dir, out, os.path.join(logs, "floor-list-source.log"))
    if r["rc"] != 0:
        sys.exit(f"the run that lists the floor's files failed (log {os.path.join(logs, 'floor-list-source.log')})")
    B.log(f"floor list: {B.write_floor_list(os.path.join(out, 'data'), set_dir):,} files")


def run_variant(v, shards_dir, out, log_path):
    if v["bin"] == TAR:
        loop = 'mkdir -p "$1/data" && for t in "$2"/*.tar; do tar xf "$t" -C "$1/data" || exit 1; done'
        argv = ["bash", "-c", loop, "tar-loop", out, shards_dir]
    elif v["bin"] == FLOOR:
        os.makedirs(os.path.join(out, "data"))
        # No syncfs, like shardprep's default --data-sync none (+flush shows the writeback).
        argv = [B.FLOOR_BIN, B.floor_list_path(os.path.dirname(shards_dir)), os.path.join(out, "data"),
                v["threads"], "nosync"]
    else:
        argv = [v["copy"], "run", "--input", shards_dir, "--output", out, "--workers", str(WORKERS)] + v["flags"]
    busy0 = B.cpu_busy_jiffies()
    wall, rc, (usr, sys_), tree_rss, s = timed_run(argv, log_path)
    machine_cpu = (B.cpu_busy_jiffies() - busy0) / B.CLK_TCK
    res = {"label": v["label"], "wall": wall, "rc": rc, "usr": usr, "sys": sys_, "cpu": usr + sys_,
           "others_cpu": max(0.0, machine_cpu - usr - sys_), "tree_rss_kib": tree_rss,
           "worker_hwm_kib": s.max_of("worker"), "coord_hwm_kib": s.max_of("coordinator"),
           "workers_seen": s.count("worker")}
    t0 = time.perf_counter()
    B.sync()
    res["flush"] = time.perf_counter() - t0
    # The whole machine's CPU over the run and its flush: the tree, the kernel's writeback threads
    # and anything else running. On a quiet machine, what the job costs in CPU-s, writeback included.
    res["machine_total"] = (B.cpu_busy_jiffies() - busy0) / B.CLK_TCK
    res.update(B.read_report(out, {"worker_rss": "report_worker_rss", "coord_rss": "report_coord_rss"}))
    return res


class FreshFs:
    """A new, empty ext4 on a loop device for one run (see FRESH_FS); `path` is where to write."""

    def __init__(self, work):
        self.img = os.path.join(work, "ab-fs.img")
        self.mnt = os.path.join(work, "ab-mnt")
        self.dev = None

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(FS_GB << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(FS_INODES), "-E",
                        "lazy_itable_init=0,lazy_journal_init=0,nodiscard", self.img], check=True)
        self.dev = subprocess.run(["losetup", "--direct-io=on", "--show", "-f", self.img], check=True,
                                  capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", "-o", "nodiscard", self.dev, self.mnt], check=True)
        self.path = os.path.join(self.mnt, "out")
        return self

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mnt], check=False)
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
        if os.path.exists(self.img):
            os.remove(self.img)
        return False


def output_shape(out):
    """What rep 1's cheap check compares across variants: files in data/ and their bytes,
    and the parquet's size."""
    n = size = 0
    try:
        for e in os.scandir(os.path.join(out, "data")):
            n += 1
            size += e.stat(follow_symlinks=False).st_size
    except OSError:
        return None
    pq = [e.stat().st_size for e in os.scandir(out) if e.name.endswith(".parquet")]
    return {"files": n, "bytes": size, "parquet_bytes": pq[0] if pq else None}


# ------------------------------------------------------------------ summary


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, labels):
    rows = {}
    for lab in labels:
        rs = [r for r in runs if r["label"] == lab]
        ok = [r for r in rs if r["rc"] == 0]
        walls = [r["wall"] for r in ok]
        rows[lab] = {
            "n": len(ok), "failed": len(rs) - len(ok), "walls": [round(w, 3) for w in walls],
            "median": med(walls), "min": min(walls) if walls else None, "max": max(walls) if walls else None,
            "flush": med([r["flush"] for r in ok]),
            "with_flush": med([r["wall"] + r["flush"] for r in ok]),
            "usr": med([r["usr"] for r in ok]), "sys": med([r["sys"] for r in ok]),
            "cpu": med([r["cpu"] for r in ok]),
            "others_cpu": med([r["others_cpu"] for r in ok]),
            "others_all": [round(r["others_cpu"], 1) for r in rs],
            "machine_total": med([r["machine_total"] for r in ok if "machine_total" in r]),
            "worker_hwm_kib": max([r["worker_hwm_kib"] or 0 for r in ok], default=0) or None,
            "coord_hwm_kib": max([r["coord_hwm_kib"] or 0 for r in ok], default=0) or None,
            "tree_rss_kib": max([r["tree_rss_kib"] or 0 for r in ok], default=0) or None,
            "report_worker_rss": max([r.get("report_worker_rss") or 0 for r in ok], default=0) or None,
        }
    return rows


def ratio(rows, a, b, key="median"):
    ra, rb = rows.get(a), rows.get(b)
    if not ra or not rb or not ra[key] or not rb[key]:
        return None
    return ra[key] / rb[key]


def f2(x, unit=""):
    return "—" if x is None else f"{x:.2f}{unit}"


def mib(kib=None, b=None):
    if b:
        return f"{b / 1048576:.1f}"
    return "—" if not kib else f"{kib / 1024:.1f}"


def table_md(all_rows, variants, baseline):
    lines = ["| set | variant | flags | n | median s | min–max s | × " + baseline + " | +flush s | × "
             + baseline + " with +flush | CPU s user+sys | others' CPU s | machine CPU s, run + flush | worker peak RSS MiB (VmHWM) | "
             "coord peak RSS MiB (VmHWM) | tree max RSS MiB (time %M) | worker RSS MiB (report) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, rows in all_rows.items():
        for v in variants:
            r = rows[v["label"]]
            if r["n"] == 0 and r["failed"] == 0:
                continue  # not run on this set (AB_SKIP_<set>)
            fail = f" ({r['failed']} failed)" if r["failed"] else ""
            flags = "`" + " ".join(v["flags"]) + "`" if v["flags"] else "(default)"
            if v["bin"] == FLOOR:
                flags = f"create_floor, {v['threads']} thread(s)"
            x = ratio(rows, v["label"], baseline)
            y = ratio(rows, v["label"], baseline, "with_flush")
            lines.append(
                f"| {s} | {v['label']}{fail} | {flags} | {r['n']} | {f2(r['median'])} | "
                f"{f2(r['min'])}–{f2(r['max'])} | {f2(x, '×')} | {f2(r['flush'])} | {f2(y, '×')} | "
                f"{f2(r['usr'])}+{f2(r['sys'])} | {f2(r['others_cpu'])} | {f2(r.get('machine_total'))} | "
                f"{mib(r['worker_hwm_kib'])} | "
                f"{mib(r['coord_hwm_kib'])} | {mib(r['tree_rss_kib'])} | {mib(b=r['report_worker_rss'])} |")
    return "\n".join(lines)


# Issue targets, judged when their labels were run: (issue, set, text, numerator, denominator, bound).
TARGETS = [
    ("15 (refactor)", "small", "post-refactor (preint) median not worse than pre-refactor (old)", "preint", "old", 1.0),
    ("15 (refactor)", "big", "post-refactor (preint) median not worse than pre-refactor (old)", "preint", "old", 1.0),
    ("20 (integrity)", "small", "header dims: preflence / preint ≤ 1.02", "preflence", "preint", 1.02),
    ("20 (integrity)", "big", "header dims: preflence / preint ≤ 1.02", "preflence", "preint", 1.02),
    ("17 (fencing)", "small", "fenced writes: final / preflence ≤ 1.05", "final", "preflence", 1.05),
    ("17 (fencing)", "big", "fenced writes: final / preflence (info; target is on small)", "final", "preflence", None),
]


def targets_md(all_rows, stats, variants=()):
    lines = ["| issue | set | target | ratio of medians | with +flush (info) | status |", "|---|---|---|---:|---:|---|"]
    # Issue 27: shardprep + its writeback no longer than `tar xf` + its writeback (small set).
    tars = [v["label"] for v in variants if v["bin"] == TAR]
    for s, rows in all_rows.items():
        for t in tars:
            for v in variants:
                lab = v["label"]
                if v["bin"] == TAR or lab not in rows or t not in rows:
                    continue
                x, y = ratio(rows, lab, t), ratio(rows, lab, t, "with_flush")
                if v["bin"] == FLOOR:
                    lines.append(f"| 27 (speed) | {s} | floor: only creating the output's files on "
                                 f"{v['threads']} thread(s), + writeback, against tar xf + writeback "
                                 f"| {f2(x, '×')} | {f2(y, '×')} | info |")
                    continue
                judged = s == "small"
                status = ("info" if not judged else "not measured" if y is None else
                          "**met**" if y <= 1.0 else "**not met**")
                lines.append(f"| 27 (speed) | {s} | {lab} + writeback ≤ tar xf + writeback (judged with +flush) "
                             f"| {f2(x, '×')} | {f2(y, '×')} | {status} |")
    for issue, s, text, a, b, bound in TARGETS:
        rows = all_rows.get(s)
        if not rows or a not in rows or b not in rows:
            continue
        x, y = ratio(rows, a, b), ratio(rows, a, b, "with_flush")
        status = "info" if bound is None else ("not measured" if x is None else
                                               ("**met**" if x <= bound else "**not met**"))
        lines.append(f"| {issue} | {s} | {text} | {f2(x, '×')} | {f2(y, '×')} | {status} |")
    # Per-core costs of decode and hashes: extra CPU of the tree over the same binary's default run.
    for s, rows in all_rows.items():
        base = rows.get("final")
        st = stats[s]
        for lab, what in (("final+decode", "decode"), ("final+hashes", "hashes")):
            r = rows.get(lab)
            if not r or not base or r["cpu"] is None or base["cpu"] is None:
                continue
            extra = r["cpu"] - base["cpu"]
            wall = ratio(rows, lab, "final")
            if extra <= 0:
                per = "no measurable extra CPU"
            elif what == "decode":
                per = f"{st['images'] / extra:,.0f} images/s per core"
            else:
                per = f"{st['image_bytes'] / 1e6 / extra:,.0f} MB/s per core"
            lines.append(f"| 20 (integrity) | {s} | cost of --{'check-images decode' if what == 'decode' else 'check-hashes'}"
                         f" (extra CPU s of the tree vs final: {extra:+.2f} s for {st['images']:,} images, "
                         f"{st['image_bytes'] / 1e6:,.0f} MB) | {f2(wall, '×')} wall | — | {per} |")
        r = rows.get("final+decode")
        if r and r["worker_hwm_kib"]:
            m = r["worker_hwm_kib"] / 1024
            lines.append(f"| 20 (integrity) | {s} | worker RSS ≤ 64 MiB with decoding on | {m:.1f} MiB | — | "
                         f"{'**met**' if m <= 64 else '**not met**'} |")
    return "\n".join(lines)


def machine_md(variants, sets):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", WORK], capture_output=True, text=True).stdout.strip()
    lines = [f"- cores (nproc): **{os.cpu_count()}**; CPU: {cpu}; kernel {platform.release()}; "
             f"work dir filesystem: {fs or '?'}; `--workers {WORKERS}` for every variant"]
    for v in variants:
        lines.append(f"- `{v['label']}`: {v['bin']} (sha256 {v['sha']}{'; ' + v['commit'] if v['commit'] else ''})"
                     + (f", flags `{' '.join(v['flags'])}`" if v["flags"] else ""))
    for s, d in sets:
        try:
            with open(os.path.join(d, "generator")) as f:
                gen = " ".join(f.read().split())
        except OSError:
            gen = "unknown generator"
        with open(os.path.join(d, "stamp")) as f:
            stamp = f.read().strip()
        lines.append(f"- data `{s}`: {stamp} (generated by {gen})")
    return "\n".join(lines)


def main():
    variants = parse_variants(os.environ.get("AB_VARIANTS", ""))
    if not variants:
        sys.exit("AB_VARIANTS is empty: run bench/ab.sh")
    labels = [v["label"] for v in variants]
    baseline = os.environ.get("AB_BASELINE", labels[0])
    if baseline not in labels:
        sys.exit(f"AB_BASELINE {baseline!r} is not a label ({' '.join(labels)})")
    # Private copies: a rebuild during the run cannot change what is timed.
    bindir = os.path.join(WORK, "ab-bin")
    os.makedirs(bindir, exist_ok=True)
    for v in variants:
        if v["bin"] == TAR:
            v["sha"], v["commit"], v["copy"] = "-", subprocess.run(
                ["tar", "--version"], capture_output=True, text=True).stdout.split("\n")[0], shutil.which("tar")
            continue
        if v["bin"] == FLOOR:
            if not (B.FLOOR_BIN and os.access(B.FLOOR_BIN, os.X_OK)):
                sys.exit(f"variant {v['label']}: no create_floor program at FLOOR_BIN={B.FLOOR_BIN!r} (bench/ab.sh builds it)")
            v["sha"], v["commit"] = binary_id(B.FLOOR_BIN)[0], f"bench/create_floor.c, {v['threads']} thread(s)"
            v["copy"] = B.FLOOR_BIN
            continue
        v["sha"], v["commit"] = binary_id(v["bin"])
        v["copy"] = os.path.join(bindir, v["sha"], "shardprep")
        if not os.path.exists(v["copy"]):
            os.makedirs(os.path.dirname(v["copy"]), exist_ok=True)
            shutil.copy2(v["bin"], v["copy"] + ".tmp")
            os.replace(v["copy"] + ".tmp", v["copy"])
    sets = B.set_dirs()
    logs = os.path.join(WORK, "ab-logs")
    os.makedirs(logs, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    all_rows, stats, raw, shapes = {}, {}, {}, {}
    for set_name, set_dir in sets:
        reps = int(os.environ.get(f"AB_REPS_{set_name}", REPS))
        # AB_SKIP_<set>="label ...": variants not run on that set (e.g. a slow one).
        skip = set(os.environ.get(f"AB_SKIP_{set_name}", "").split())
        here = [v for v in variants if v["label"] not in skip]
        shards_dir = os.path.join(set_dir, "shards")
        tars = B.shard_paths(shards_dir)
        st = stats[set_name] = image_stats(set_dir)
        B.log(f"set {set_name}: {st['shards']} shards, {st['images']:,} images, "
              f"{st['tar_bytes'] / 1e6:,.0f} MB of tar; {reps} reps of {' '.join(v['label'] for v in here)}")
        B.warm_inputs(tars)
        out_root = os.path.join(WORK, "ab-out", set_name)
        trash = os.path.join(WORK, "ab-trash")
        for d in (out_root, trash):
            B.rm_rf(d)
            os.makedirs(d)
        if any(v["bin"] == FLOOR for v in here):
            ensure_floor_list(set_dir, shards_dir, here, trash, logs)
        runs = []
        shapes[set_name] = {}
        for rep in range(1, reps + 1):
            k = (rep - 1) % len(here)
            for v in here[k:] + here[:k]:
                out = os.path.join(out_root, v["label"].replace("/", "_"))
                if shutil.disk_usage(WORK).free < MIN_FREE_GB * 1e9:
                    B.warn(f"{set_name} rep {rep}: less than {MIN_FREE_GB} GB free: deleted the kept outputs "
                           f"before {v['label']} (runs after this may be slower: ext4 skips recently freed inodes)")
                    B.rm_rf(trash)
                    os.makedirs(trash)
                for other in os.listdir(out_root):
                    B.clear_output(os.path.join(out_root, other), trash)
                if not FRESH_FS:
                    B.sync()
                    # Read back only the binary about to run (and the shards): a reset does not
                    # depend on how many variants there are.
                    dropped = B.reset_caches(tars, [v["copy"]])
                    waited, busy_before = B.wait_quiet()
                log_path = os.path.join(logs, f"{set_name}-{v['label']}-rep{rep}.log")
                if os.path.exists(log_path):
                    os.remove(log_path)
                if FRESH_FS:
                    fs = FreshFs(WORK).__enter__()
                    B.sync()
                    dropped = B.reset_caches(tars, [v["copy"]])
                    waited, busy_before = B.wait_quiet()
                    out = fs.path
                try:
                    r = run_variant(v, shards_dir, out, log_path)
                    if FRESH_FS and rep == 1 and r["rc"] == 0:
                        shapes[set_name][v["label"]] = output_shape(out)
                finally:
                    if FRESH_FS:
                        fs.__exit__()
                r.update(rep=rep, waited_quiet=waited, busy_before=busy_before, caches_dropped=dropped)
                runs.append(r)
                wr = mib(r["worker_hwm_kib"])
                print(f"  {set_name} rep {rep} {v['label']:14s}: {r['wall']:7.2f} s (+flush {r['flush']:.2f}; "
                      f"cpu {r['cpu']:.2f}; others' CPU {r['others_cpu']:.1f} s; worker RSS {wr} MiB; "
                      f"verdict {r.get('verdict')})" + (f" EXIT {r['rc']} (log {log_path})" if r["rc"] else ""),
                      flush=True)
                if r["rc"] != 0:
                    B.warn(f"{set_name} rep {rep} {v['label']}: exit code {r['rc']} (log: {log_path})")
                elif r.get("verdict") != "ok" and v["bin"] not in (TAR, FLOOR):
                    B.warn(f"{set_name} rep {rep} {v['label']}: report.json verdict {r.get('verdict')!r}")
                if rep == 1 and r["rc"] == 0 and not FRESH_FS:
                    shapes[set_name][v["label"]] = output_shape(out)
        if RM_AT_END:
            B.log(f"set {set_name} done; deleting its outputs (untimed)")
            B.rm_rf(out_root)
            B.rm_rf(trash)
            B.sync()
        else:
            later = os.path.join(WORK, "ab-later", f"{set_name}-{time.time_ns()}")
            os.makedirs(os.path.dirname(later), exist_ok=True)
            for other in os.listdir(out_root):
                os.rename(os.path.join(out_root, other), os.path.join(trash, f"{other}-last"))
            os.rename(trash, later)
            B.log(f"set {set_name} done; its outputs are left in {later} (AB_RM_AT_END=0)")
        ref = shapes[set_name].get(baseline)
        tar_labels = {v["label"] for v in variants if v["bin"] == TAR}
        for lab, shp in shapes[set_name].items():
            if lab in tar_labels or baseline in tar_labels:
                continue  # tar writes no captions: its data/ differs by design
            if ref and shp and (shp["files"], shp["bytes"]) != (ref["files"], ref["bytes"]):
                B.warn(f"{set_name} {lab}: data/ has {shp['files']:,} files, {shp['bytes']:,} bytes; "
                       f"{baseline} has {ref['files']:,}, {ref['bytes']:,}")
        all_rows[set_name] = summarize(runs, labels)
        for lab, row in all_rows[set_name].items():
            if row["median"] and row["others_cpu"] is not None and row["others_cpu"] > max(0.5, 0.5 * row["median"]):
                B.warn(f"{set_name} {lab}: noisy? other processes used {row['others_cpu'] / row['median']:.2f} "
                       f"cores on average during its runs (median; includes the kernel's writeback threads)")
        raw[set_name] = {"stats": st, "runs": runs, "shapes": shapes[set_name], "skipped": sorted(skip)}
    saved = {"date": started.isoformat(), "workers": WORKERS, "baseline": baseline, "fresh_fs": FRESH_FS,
             "variants": [{k: v[k] for k in ("label", "bin", "flags", "threads", "sha", "commit") if k in v}
                          for v in variants],
             "sets": sets, "raw": raw, "warnings": B.WARNINGS}
    with open(os.path.join(WORK, "ab-results.json"), "w") as f:
        json.dump(saved, f, indent=1, default=str)
    return write_report(saved)


def write_report(saved):
    variants, baseline, raw = saved["variants"], saved["baseline"], saved["raw"]
    labels = [v["label"] for v in variants]
    all_rows = {s: summarize(r["runs"], labels) for s, r in raw.items()}
    stats = {s: r["stats"] for s, r in raw.items()}
    table, targets = table_md(all_rows, variants, baseline), targets_md(all_rows, stats, variants)
    print("\n" + table + "\n\n" + targets)
    started = datetime.datetime.fromisoformat(saved["date"])
    total_wait = sum(r["waited_quiet"] for s in raw.values() for r in s["runs"])
    with open(RESULTS, "w") as f:
        f.write(f"# shardprep A/B benchmark{' (QUICK smoke run)' if QUICK else ''}\n\n")
        f.write(f"Date: {started:%Y-%m-%d %H:%M %Z}. Made by `bench/ab.sh` (interleaved repetitions, order "
                f"rotated each repetition; medians shown; baseline `{baseline}`).\n\n")
        f.write("## Machine, binaries, data\n\n" + machine_md(variants, saved["sets"]) + "\n\n")
        f.write("## Results\n\n" + table + "\n\n")
        f.write(("Before each timed run: a fresh ext4 made for the run's output (AB_FRESH_FS=1: loop device, "
                 "deleted after the run)" if saved.get("fresh_fs") else
                 "Before each timed run, as bench.py does: earlier outputs cleared (≥ 20,000 files: moved aside, "
                 "deleted at the end of the set)") + ", `sync`, page/dentry/inode caches dropped and the shards and "
                "binaries read back in, "
                + (f"{B.WARM_MEM_MB:,} MB of memory touched and freed (bench.py's warm_memory), "
                   if B.WARM_MEM_MB > 0 else "no memory warmed (BENCH_WARM_MEM_MB=0), ")
                + "then a wait for a quiet machine. Worker/coordinator RSS: the largest "
                "`VmHWM` read from /proc of each process of the tree (sampled); tree: `/usr/bin/time %M` "
                "(max over every process, coordinator included). CPU s: the tree's user+sys "
                "(`/usr/bin/time %U %S`; the coordinator waits for its workers, so theirs is included). Others' CPU: busy time of the machine (/proc/stat) minus the tree's CPU.\n\n")
        f.write("## Targets\n\n" + targets + "\n\n")
        f.write("## Checks and warnings\n\n")
        f.write("\n".join(f"- {w}" for w in saved["warnings"]) + "\n\n" if saved["warnings"] else
                "- none: every run exited 0 with verdict ok, and rep 1's data/ matched the baseline's "
                "(file count and bytes).\n\n")
        f.write("<details><summary>every repetition</summary>\n\n")
        for s, rows in all_rows.items():
            for lab, r in rows.items():
                if r["n"] == 0 and r["failed"] == 0:
                    f.write(f"- {s} {lab}: not run on this set (AB_SKIP_{s})\n")
                    continue
                f.write(f"- {s} {lab}: wall {r['walls']}; others' CPU {r['others_all']}\n")
        f.write(f"\nTime spent waiting for a quiet machine before runs (untimed): {total_wait:.0f} s.\n")
        f.write("\n</details>\n")
    B.log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    if "--report-only" in sys.argv[1:]:
        with open(os.path.join(WORK, "ab-results.json")) as f:
            sys.exit(write_report(json.load(f)))
    sys.exit(main())
