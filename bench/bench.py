#!/usr/bin/env python3
"""Timing driver for bench/run.sh (run that, not this: it builds, makes the venv
and the data, and sets the environment read below).

For each data set, in one process, ALTERNATING repetitions
(rep 1: tar, seed, sp1, spN; rep 2: tar, seed, sp1, spN; ...):
  tar   plain `for t in shards/*.tar; do tar xf "$t" -C out/data; done`  (the floor)
  seed  that extraction + seed_compile.py + seed_extract_captions.py      (the seed's pipeline)
  sp1   shardprep run --workers 1
  spN   shardprep run --workers N   (N = BENCH_WORKERS, default nproc)
  spNs  shardprep run --workers N --data-sync shard (each shard's files on disk before its commit)
Outputs are removed and `sync` is called before every timed run (outside the
timed region). The flush of the run's dirty pages (a `sync` right after it) is
timed separately and shown as "+flush".
"""

import datetime
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
WORK = os.path.abspath(os.environ.get("BENCH_WORK", os.path.join(BENCH_DIR, "work")))
SP_BIN = os.path.abspath(os.environ.get("SP_BIN", os.path.join(ROOT, "target", "release", "shardprep")))
PY = os.path.abspath(os.environ.get("BENCH_PY", sys.executable))
REPS = int(os.environ.get("BENCH_REPS", "3"))
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 1)))
TOOLS = os.environ.get("BENCH_TOOLS", "tar seed sp1 spN spNs floor").split()
# The create-floor program (bench/create_floor.c, built by run.sh); the "floor" row needs it.
FLOOR_BIN = os.environ.get("FLOOR_BIN", "")
QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
RESULTS = os.environ.get("BENCH_RESULTS", os.path.join(BENCH_DIR, "RESULTS.md"))
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
DATASET_ID = "dalle3"

# Targets from the issue "Performance: one streaming pass at the disk's limit".
# (set kind, label, numerator tool, denominator tool, op, bound)
TARGETS = [
    ("small", "many small files: spN ≤ 1.0× tar xf", "spN", "tar", "<=", 1.0),
    ("small", "many small files: seed / spN ≥ 3×", "seed", "spN", ">=", 3.0),
    ("small", "many small files: sp1 ≤ 1.3× tar xf", "sp1", "tar", "<=", 1.3),
    ("big", "big files: spN ≤ 1.1× tar xf", "spN", "tar", "<=", 1.1),
]

# Shared machine: before each timed run wait (at most IDLE_WAIT s) until the other
# processes use less than IDLE_MAX_BUSY cores; during each run, measure how much
# CPU the rest of the machine used ("others' CPU s"), a noise indicator.
IDLE_MAX_BUSY = float(os.environ.get("BENCH_IDLE_MAX_BUSY", "0.3"))
IDLE_WAIT = float(os.environ.get("BENCH_IDLE_WAIT", "0" if QUICK else "120"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# ext4 skips inodes freed in the last minutes (recently_deleted() in ialloc.c: 60 s,
# 360 s while the inode table block is dirty) when it allocates new ones, at the
# cost of a buffer-cache lookup per skipped inode: creating 200k files right after
# deleting 300k spends most of its time there (perf: find_get_block_common,
# recently_deleted). So outputs with many files are moved aside between runs and
# deleted only at the end of the set, where they cannot slow a timed run.
DEFER_RM_FILES = int(os.environ.get("BENCH_DEFER_RM_FILES", "20000"))
# Optional pause after clearing outputs, before the quiet-machine wait (default none).
SETTLE = float(os.environ.get("BENCH_SETTLE", "0"))

WARNINGS = []
CACHES_DROPPED = []


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def warn(msg):
    WARNINGS.append(msg)
    print(f"WARNING: {msg}", flush=True)


def rm_rf(path):
    if os.path.lexists(path):
        shutil.rmtree(path)


def sync():
    subprocess.run(["sync"], check=True)


def clear_output(path, trash):
    """Removes a finished run's output: at once if small, else moved into `trash`
    (same filesystem, a rename) and deleted at the end of the set (see DEFER_RM_FILES)."""
    data = os.path.join(path, "data")
    try:
        n = sum(1 for _ in os.scandir(data)) if DEFER_RM_FILES > 0 else 0
    except OSError:
        n = 0
    if DEFER_RM_FILES > 0 and n >= DEFER_RM_FILES:
        os.rename(path, os.path.join(trash, f"{os.path.basename(path)}-{time.time_ns()}"))
    else:
        rm_rf(path)


def cpu_busy_jiffies():
    """Busy jiffies of the whole machine so far (all /proc/stat time but idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return sum(vals) - vals[3] - vals[4]


def busy_cores(seconds=1.0):
    a = cpu_busy_jiffies()
    time.sleep(seconds)
    return (cpu_busy_jiffies() - a) / CLK_TCK / seconds


def wait_quiet():
    """Waits until the machine is nearly idle (or IDLE_WAIT s passed); returns (waited s, busy cores)."""
    t0 = time.perf_counter()
    busy = busy_cores(0.5)
    announced = False
    while busy > IDLE_MAX_BUSY and time.perf_counter() - t0 < IDLE_WAIT:
        if not announced:
            log(f"machine busy ({busy:.1f} cores used by others); waiting up to {IDLE_WAIT:.0f} s")
            announced = True
        busy = busy_cores(2.0)
    return time.perf_counter() - t0, busy


def set_dirs():
    out = []
    for item in os.environ.get("BENCH_SET_DIRS", "").split():
        name, _, path = item.partition("=")
        out.append((name, os.path.abspath(path)))
    if not out:
        sys.exit("BENCH_SET_DIRS is empty: run bench/run.sh, not bench.py")
    return out


def shard_paths(shards_dir):
    return sorted(
        os.path.join(shards_dir, f) for f in os.listdir(shards_dir) if f.endswith(".tar")
    )


def shard_stats(set_dir):
    """Members and bytes of the set's shards (cached next to the stamp)."""
    cache = os.path.join(set_dir, "stats.json")
    tars = shard_paths(os.path.join(set_dir, "shards"))
    key = [[os.path.basename(t), os.path.getsize(t), int(os.path.getmtime(t))] for t in tars]
    if os.path.exists(cache):
        with open(cache) as f:
            st = json.load(f)
        if st.get("key") == key:
            return st
    members = 0
    payload = 0
    json_files = 0
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf:
                if m.isfile():
                    members += 1
                    payload += m.size
                    json_files += m.name.endswith(".json")
    st = {
        "key": key,
        "shards": len(tars),
        "members": members,
        "json_files": json_files,
        "payload_bytes": payload,
        "tar_bytes": sum(k[1] for k in key),
    }
    with open(cache, "w") as f:
        json.dump(st, f)
    return st


def warm_inputs(tars):
    """Read every shard once, untimed, so every timed run sees a warm page cache."""
    for t in tars:
        with open(t, "rb") as f:
            while f.read(1 << 22):
                pass


# Reset the kernel's caches before every timed run (needs root; BENCH_DROP_CACHES=0 to skip).
DROP_CACHES = os.environ.get("BENCH_DROP_CACHES", "1") == "1"


def program_files():
    """Files every timed run reads besides the shards: the shardprep binary, tar, and the
    Python interpreter with its libraries (venv + base install) used by the seed's scripts."""
    paths = [SP_BIN, shutil.which("tar") or "/bin/tar"]
    out = subprocess.run([PY, "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
                         capture_output=True, text=True, check=True).stdout.split()
    for prefix in dict.fromkeys(out):
        for root, _dirs, files in os.walk(os.path.join(prefix, "lib")):
            paths.extend(os.path.join(root, f) for f in files)
    return [p for p in paths if os.path.isfile(p)]


def reset_caches(tars, programs):
    """Drops the page, dentry and inode caches, then reads the inputs and programs back in.

    Why: every run creates 200k-290k files, and their inodes stay cached. This kernel's
    inode and dentry hash tables are small (65,536 and 131,072 buckets on a 24 GiB VM:
    `dmesg | grep hash`), so each run makes the next one's file creation slower (perf:
    `insert_inode_locked`, `__d_lookup` walking long chains: 32% and 16% of a `tar xf`
    after ~2.5M cached inodes), and a full page cache makes writes wait for reclaim.
    Without a reset, whichever tool runs later in a repetition pays for the earlier
    ones. With it, every run starts from the same state: inputs warm, nothing else cached.
    Returns True when the caches were dropped."""
    if not DROP_CACHES:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    warm_inputs(tars)
    warm_inputs(programs)
    warm_memory()
    return True


# Memory touched and freed before every timed run (MB; 0: none). See warm_memory.
WARM_MEM_MB = int(os.environ.get("BENCH_WARM_MEM_MB", "3072"))


def warm_memory():
    """Touches WARM_MEM_MB of memory and frees it, so every run starts with the same pool of
    free pages the hypervisor backs.

    Why: on a VM whose balloon reports free pages to the host (virtio-balloon free page
    reporting, as on the bench hosts), a page freed a while ago costs a host fault the first
    time the guest touches it again (measured here: ~9-13 µs a page against ~2 µs for a page
    freed moments ago). Every file a run writes takes page-cache pages, so a run that starts
    with few recently freed pages pays that fault for most of its files. drop_caches frees
    the previous run's page cache, so without this step the pool a run starts with depends
    on what ran before it. With it, each run starts warm (2-3 s faster on the small set;
    the ratios between tools moved by less than the noise: bench/SPEED-DESIGNS.md
    section 8); BENCH_WARM_MEM_MB=0 gives the old behaviour."""
    if WARM_MEM_MB <= 0:
        return
    size = WARM_MEM_MB << 20
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) << 10 for l in f if l.startswith("MemAvailable:"))
        size = min(size, avail // 2)
    except (OSError, StopIteration, ValueError):
        pass
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    m = mmap.mmap(-1, size, flags=flags)
    if not getattr(mmap, "MAP_POPULATE", 0):
        for off in range(0, size, mmap.PAGESIZE):
            m[off] = 1
    m.close()


def timed(argv, cwd, log_path):
    """Run argv; returns (wall seconds, exit code, peak RSS KiB of the process tree, cpu s).

    Peak RSS is the largest max-RSS of any single process of the tree (what
    getrusage reports for waited-for children), from `/usr/bin/time -f %M` when
    it exists, else from a tiny Python wrapper's RUSAGE_CHILDREN.
    """
    rss_file = log_path + ".rusage"
    if GNU_TIME:
        full = [GNU_TIME, "-f", "%M %U %S", "-o", rss_file] + argv
    else:
        wrapper = (
            "import resource,subprocess,sys\n"
            "rc=subprocess.call(sys.argv[2:])\n"
            "u=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "open(sys.argv[1],'w').write('%d %f %f' % (u.ru_maxrss,u.ru_utime,u.ru_stime))\n"
            "sys.exit(rc)\n"
        )
        full = [sys.executable, "-c", wrapper, rss_file] + argv
    with open(log_path, "ab") as logf:
        logf.write(("$ " + " ".join(argv) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        rc = subprocess.call(full, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    rss_kib, cpu = None, None
    try:
        with open(rss_file) as f:
            # GNU time prefixes "Command exited with non-zero status N" on failure.
            parts = [ln for ln in f.read().splitlines() if ln.strip()][-1].split()
        rss_kib = int(parts[0])
        cpu = (float(parts[1]), float(parts[2]))
    except (OSError, ValueError, IndexError):
        pass
    return wall, rc, rss_kib, cpu


def run_tool(tool, shards_dir, out, log_path):
    """One timed run of `tool` into the (fresh) folder `out`. Returns a result dict."""
    res = {"tool": tool, "phases": {}}
    tar_loop = 'for t in "$1"/*.tar; do tar xf "$t" -C "$2"/data || exit 1; done'
    if tool in ("tar", "seed"):
        os.makedirs(os.path.join(out, "data"))  # the seed's `mkdir data` (untimed)
        steps = [("tar xf", ["bash", "-c", tar_loop, "tar-loop", shards_dir, out], out)]
        if tool == "seed":
            steps.append(("compile.py", [PY, os.path.join(BENCH_DIR, "seed_compile.py")], out))
            steps.append(
                ("extract-captions.py", [PY, os.path.join(BENCH_DIR, "seed_extract_captions.py")], out)
            )
    elif tool == "floor":
        os.makedirs(os.path.join(out, "data"))
        # No syncfs, like shardprep's default --data-sync none (+flush shows the writeback).
        argv = [FLOOR_BIN, floor_list_path(os.path.dirname(shards_dir)), os.path.join(out, "data"), str(WORKERS),
                "nosync"]
        steps = [("create files", argv, None)]
    else:
        n = 1 if tool == "sp1" else WORKERS
        argv = [SP_BIN, "run", "--input", shards_dir, "--output", out, "--workers", str(n)]
        if tool == "spNs":
            argv += ["--data-sync", "shard"]
        steps = [("shardprep run", argv, None)]
    wall, rc, rss, usr, sys_ = 0.0, 0, 0, 0.0, 0.0
    busy0 = cpu_busy_jiffies()
    for name, argv, cwd in steps:
        w, code, r, c = timed(argv, cwd, log_path)
        res["phases"][name] = w
        wall += w
        rss = max(rss, r or 0)
        if c:
            usr += c[0]
            sys_ += c[1]
        if code != 0:
            rc = code
            break
    machine_cpu = (cpu_busy_jiffies() - busy0) / CLK_TCK
    cpu = usr + sys_
    res.update(wall=wall, rc=rc, rss_kib=rss or None, cpu=cpu, usr=usr, sys=sys_,
               others_cpu=max(0.0, machine_cpu - cpu))
    # The flush of what the run left dirty, timed separately (not in "wall").
    t0 = time.perf_counter()
    sync()
    res["flush"] = time.perf_counter() - t0
    if tool.startswith("sp"):
        res.update(read_report(out, {"wall_ms": "report_wall_ms", "coord_rss": "coord_rss",
                                     "worker_rss": "worker_rss"}))
    return res


def read_report(out, keys):
    """The verdict of shardprep's report.json in `out`, and the facts named in
    `keys` (report fact → result key: wall_ms, coord_rss, worker_rss); only
    the verdict, saying why, when there is no readable report."""
    try:
        with open(os.path.join(out, "report.json")) as f:
            rep = json.load(f)
        r = rep.get("resources") or {}
    except (OSError, ValueError) as e:
        return {"verdict": f"no report.json ({e.__class__.__name__})"}
    facts = {"wall_ms": rep.get("wall_ms"), "coord_rss": r.get("coordinator_peak_rss_bytes"),
             "worker_rss": r.get("worker_peak_rss_bytes")}
    return {"verdict": rep.get("verdict"), **{ours: facts[fact] for fact, ours in keys.items()}}


def floor_list_path(set_dir):
    return os.path.join(WORK, f"floor-{os.path.basename(set_dir)}.list")


def write_floor_list(data_dir, set_dir):
    """Names and sizes of the output files (the seed's data/, equal to shardprep's) for
    create_floor: NUL-terminated "SIZE<TAB>NAME" records, in directory order."""
    n = 0
    with open(floor_list_path(set_dir), "wb") as f:
        for e in os.scandir(data_dir):
            if e.is_file(follow_symlinks=False):
                f.write(b"%d\t%s\0" % (e.stat(follow_symlinks=False).st_size, os.fsencode(e.name)))
                n += 1
    return n


# ---------------------------------------------------------------- correctness


def snapshot(out):
    """What the cheap correctness check compares: parquet rows and the data/ listing."""
    import pyarrow.parquet as pq

    snap = {"rows": None, "names": set(), "table": None}
    pq_path = os.path.join(out, f"{DATASET_ID}.parquet")
    try:
        t = pq.read_table(pq_path)
        snap["rows"] = t.num_rows
        cols = [c for c in ("filename", "caption", "width", "height") if c in t.column_names]
        df = t.select(cols).to_pandas()
        for c in ("filename", "caption"):
            if c in df:
                df[c] = df[c].astype(object)
        snap["table"] = df.sort_values("filename").reset_index(drop=True) if "filename" in df else df
        snap["schema"] = {f.name: str(f.type) for f in t.schema}
    except Exception as e:  # noqa: BLE001 - any failure is a finding, not a crash
        snap["error"] = f"{pq_path}: {e}"
    data = os.path.join(out, "data")
    try:
        snap["names"] = {e.name for e in os.scandir(data)}
    except OSError as e:
        snap["error"] = f"{data}: {e}"
    return snap


def compare(ref, got, out, seed_out_txt, label):
    """Warns (one line each) where shardprep's output differs from the seed's."""
    ok = True
    if got.get("error"):
        warn(f"{label}: {got['error']}")
        ok = False
    want = {"width": "int64", "height": "int64", "caption": "string", "filename": "string"}
    if got.get("schema") is not None and got["schema"] != want:
        warn(f"{label}: parquet schema {got['schema']} != contract's {want}")
        ok = False
    if ref["rows"] != got["rows"]:
        warn(f"{label}: parquet rows {got['rows']} != seed's {ref['rows']}")
        ok = False
    ref_txt = {n for n in ref["names"] if n.endswith(".txt")}
    got_txt = {n for n in got["names"] if n.endswith(".txt")}
    if ref_txt != got_txt:
        warn(
            f"{label}: .txt files differ from the seed's: {len(got_txt - ref_txt)} extra, "
            f"{len(ref_txt - got_txt)} missing (of {len(ref_txt)})"
        )
        ok = False
    other_ref = ref["names"] - ref_txt
    other_got = got["names"] - got_txt
    if other_ref != other_got:
        warn(
            f"{label}: extracted members differ from tar xf's: {len(other_got - other_ref)} extra, "
            f"{len(other_ref - other_got)} missing"
        )
        ok = False
    if ref["table"] is not None and got["table"] is not None and ref["rows"] == got["rows"]:
        try:
            a, b = ref["table"], got["table"]
            same = list(a.columns) == list(b.columns) and all(
                (a[c].astype(str).values == b[c].astype(str).values).all() for c in a.columns
            )
        except Exception:  # noqa: BLE001
            same = False
        if not same:
            warn(f"{label}: parquet content (filename, caption, width, height) differs from the seed's")
            ok = False
    # Caption text: compare a deterministic sample of the .txt files byte for byte.
    common = sorted(ref_txt & got_txt)
    step = max(1, len(common) // 500)
    bad = 0
    for name in common[::step]:
        with open(os.path.join(seed_out_txt, name), "rb") as f1, open(
            os.path.join(out, "data", name), "rb"
        ) as f2:
            bad += f1.read() != f2.read()
    if bad:
        warn(f"{label}: {bad} of {len(common[::step])} sampled .txt captions differ from the seed's")
        ok = False
    if ok:
        print(f"  check {label}: same rows ({got['rows']}), same .txt set ({len(got_txt)}), "
              f"same members, same parquet values, sampled captions equal", flush=True)
    return ok


# ---------------------------------------------------------------- reporting


def med(xs):
    return statistics.median(xs) if xs else None


def fmt_s(x):
    return "—" if x is None else f"{x:.2f}"


def fmt_mib(b):
    return "—" if b is None else f"{b / 1048576:.0f}"


def summarize(set_name, st, runs):
    """Rows of the table for one set: {tool: {...}}."""
    rows = {}
    for tool in TOOLS:
        rs = [r for r in runs if r["tool"] == tool]
        good = [r for r in rs if r["rc"] == 0]
        if not rs:
            continue
        walls = [r["wall"] for r in good]
        m = med(walls)
        row = {
            "n": len(good),
            "failed": len(rs) - len(good),
            "median": m,
            "min": min(walls) if walls else None,
            "max": max(walls) if walls else None,
            "walls": [round(r["wall"], 3) for r in rs],
            "flush": med([r["flush"] for r in good]),
            "with_flush": med([r["wall"] + r["flush"] for r in good]),
            "cpu": med([r["cpu"] for r in good if r["cpu"] is not None]),
            "others_cpu": med([r["others_cpu"] for r in good]),
            "usr": med([r["usr"] for r in good]),
            "sys": med([r["sys"] for r in good]),
            "rss_kib": max([r["rss_kib"] for r in good if r["rss_kib"]] or [0]) or None,
            "coord_rss": max([r["coord_rss"] for r in good if r.get("coord_rss")] or [0]) or None,
            "worker_rss": max([r["worker_rss"] for r in good if r.get("worker_rss")] or [0]) or None,
            "files_s": st["members"] / m if m else None,
            "mb_s": st["tar_bytes"] / 1e6 / m if m else None,
            "phases": {
                k: med([r["phases"][k] for r in good if k in r["phases"]])
                for k in (good[0]["phases"] if good else {})
            },
        }
        rows[tool] = row
    return rows


def ratio(rows, a, b, key="median"):
    try:
        return rows[a][key] / rows[b][key]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


TOOL_LABEL = {
    "tar": "tar xf (floor)",
    "seed": "seed: tar xf + compile.py + extract-captions.py",
    "sp1": "shardprep run --workers 1",
    "spN": None,  # filled in with N
    "floor": None,  # filled in with N
}


def label(tool):
    if tool == "floor":
        return f"create only: shardprep's output files, {WORKERS} threads, no flush"
    if tool == "spNs":
        return f"shardprep run --workers {WORKERS} --data-sync shard"
    return TOOL_LABEL.get(tool) or f"shardprep run --workers {WORKERS}"


def table_md(all_rows, stats):
    lines = [
        "| set | tool | median s | min–max s | × tar | files/s | MB/s | +flush s | CPU s user+sys | others' CPU s | peak RSS MiB (time %M) | coord RSS MiB (report) | worker RSS MiB (report) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for set_name, rows in all_rows.items():
        for tool, r in rows.items():
            x = ratio(rows, tool, "tar")
            fail = f" ({r['failed']} failed)" if r["failed"] else ""
            xs = "—" if x is None else f"{x:.2f}×"
            fs = "—" if r["files_s"] is None else f"{r['files_s']:,.0f}"
            mbs = "—" if r["mb_s"] is None else f"{r['mb_s']:.0f}"
            rss = "—" if not r["rss_kib"] else f"{r['rss_kib'] / 1024:.0f}"
            lines.append(
                f"| {set_name} | {label(tool)}{fail} | {fmt_s(r['median'])} | "
                f"{fmt_s(r['min'])}–{fmt_s(r['max'])} | {xs} | {fs} | {mbs} | {fmt_s(r['flush'])} | "
                f"{fmt_s(r['usr'])}+{fmt_s(r['sys'])} | {fmt_s(r['others_cpu'])} | {rss} | {fmt_mib(r['coord_rss'])} | {fmt_mib(r['worker_rss'])} |"
            )
    return "\n".join(lines)


def ratios_md(all_rows):
    lines = []
    for set_name, rows in all_rows.items():
        parts = []
        for a, b, name in (
            ("sp1", "tar", "sp1 / tar"),
            ("spN", "tar", "spN / tar"),
            ("seed", "sp1", "seed / sp1"),
            ("seed", "spN", "seed / spN"),
            ("spN", "floor", "spN / create-only"),
            ("spNs", "tar", "spNs / tar"),
            ("tar", "floor", "tar / create-only"),
        ):
            x = ratio(rows, a, b)
            if x is not None:
                y = ratio(rows, a, b, "with_flush")
                yf = "" if y is None else f" ({y:.2f}× with +flush)"
                parts.append(f"{name} = **{x:.2f}×**{yf}")
        seed = rows.get("seed")
        if seed and seed["phases"]:
            parts.append(
                "seed phases (median s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in seed["phases"].items() if v is not None)
            )
        lines.append(f"- **{set_name}**: " + "; ".join(parts))
    return "\n".join(lines)


def targets_md(all_rows):
    lines = ["| target | measured (medians of wall time) | status | same ratio with +flush (info) |",
             "|---|---:|---|---:|"]
    verdicts = []
    for kind, text, a, b, op, bound in TARGETS:
        rows = all_rows.get(kind)
        if rows is None:
            lines.append(f"| {text} | — | not measured (set not run) | — |")
            continue
        x = ratio(rows, a, b)
        if x is None:
            status = "not measured"
        else:
            met = x <= bound if op == "<=" else x >= bound
            status = "**met**" if met else "**not met**"
            verdicts.append(met)
        xs = "—" if x is None else f"{x:.2f}×"
        y = ratio(rows, a, b, "with_flush")
        ys = "—" if y is None else f"{y:.2f}×"
        lines.append(f"| {text} | {xs} | {status} | {ys} |")
    return "\n".join(lines)


def machine_md():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    fs = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", WORK], capture_output=True, text=True).stdout.strip()
    built = "unknown commit"
    for path in (SP_BIN + ".commit", os.path.join(WORK, "bin", "shardprep.commit")):
        try:
            with open(path) as f:  # written by run.sh when it copied the binary
                built = f.read().strip()
            break
        except OSError:
            pass
    tar_v = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (
        f"- cores (nproc): **{os.cpu_count()}**; CPU: {cpu}; memory: {mem}\n"
        f"- kernel: {platform.release()}; work dir filesystem: {fs or '?'}; {tar_v}; Python {platform.python_version()}\n"
        f"- shardprep: {built}, `cargo build --release`\n"
        f"- RSS via: {'`/usr/bin/time -f %M`' if GNU_TIME else 'Python getrusage(RUSAGE_CHILDREN)'}"
    )


def write_chart(all_rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - optional
        return None
    sets = list(all_rows)
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        rows = all_rows[s]
        tools = [t for t in TOOLS if t in rows and rows[t]["median"] is not None]
        ax.bar([{"spN": f"sp{WORKERS}", "spNs": f"sp{WORKERS} sync", "floor": "create-only"}.get(t, t)
                for t in tools], [rows[t]["median"] for t in tools],
               color=["#888", "#c66", "#69c", "#36a", "#58b", "#bbb"][: len(tools)])
        ax.set_title(f"{s}: median wall time (s)")
        for i, t in enumerate(tools):
            ax.text(i, rows[t]["median"], f"{rows[t]['median']:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main():
    sets = set_dirs()
    for tool in TOOLS:
        if tool not in ("tar", "seed", "sp1", "spN", "spNs", "floor"):
            sys.exit(f"unknown tool {tool!r} in BENCH_TOOLS")
    if "floor" in TOOLS and not (FLOOR_BIN and os.access(FLOOR_BIN, os.X_OK)):
        warn("no create_floor program (gcc missing?): the floor row is skipped")
        TOOLS.remove("floor")
    if "floor" in TOOLS and ("seed" not in TOOLS or TOOLS.index("seed") > TOOLS.index("floor")):
        warn("the floor row needs the seed's output of rep 1 ('seed' before 'floor' in BENCH_TOOLS): skipped")
        TOOLS.remove("floor")
    logs = os.path.join(WORK, "logs")
    os.makedirs(logs, exist_ok=True)
    all_rows, all_stats, raw = {}, {}, {}
    started = datetime.datetime.now().astimezone()
    for set_name, set_dir in sets:
        shards_dir = os.path.join(set_dir, "shards")
        st = shard_stats(set_dir)
        all_stats[set_name] = st
        log(f"set {set_name}: {st['shards']} shards, {st['members']:,} members, "
            f"{st['tar_bytes'] / 1e6:,.0f} MB of tar; {REPS} reps of {' '.join(TOOLS)}")
        warm_inputs(shard_paths(shards_dir))
        out_root = os.path.join(WORK, "out", set_name)
        trash = os.path.join(WORK, "trash")
        rm_rf(out_root)
        rm_rf(trash)
        os.makedirs(out_root)
        os.makedirs(trash)
        runs = []
        seed_ref = None
        programs = program_files()
        for rep in range(1, REPS + 1):
            # Rotate the order every repetition (rep 1 keeps TOOLS' order: the seed's
            # output is the reference for the correctness check of the shardprep runs).
            k = (rep - 1) % len(TOOLS)
            for tool in TOOLS[k:] + TOOLS[:k]:
                out = os.path.join(out_root, tool)
                # Outside the timed region: clear every earlier output, flush, then time.
                removed = False
                for other in os.listdir(out_root):
                    if not (rep == 1 and other == "seed" and seed_ref is not None):
                        clear_output(os.path.join(out_root, other), trash)
                        removed = True
                sync()
                if removed and SETTLE > 0:
                    time.sleep(SETTLE)
                CACHES_DROPPED.append(reset_caches(shard_paths(shards_dir), programs))
                waited, busy_before = wait_quiet()
                log_path = os.path.join(logs, f"{set_name}-{tool}-rep{rep}.log")
                if os.path.exists(log_path):
                    os.remove(log_path)
                r = run_tool(tool, shards_dir, out, log_path)
                r.update(rep=rep, waited_quiet=waited, busy_before=busy_before)
                runs.append(r)
                extra = ""
                if tool.startswith("sp"):
                    extra += f", verdict {r.get('verdict')}"
                if r["rc"] != 0:
                    extra += f", EXIT {r['rc']} (log {log_path})"
                print(f"  {set_name} rep {rep} {tool:4s}: {r['wall']:7.2f} s "
                      f"(+flush {r['flush']:.2f} s; others' CPU {r['others_cpu']:.1f} s){extra}", flush=True)
                if r["rc"] != 0:
                    warn(f"{set_name} rep {rep} {tool}: exit code {r['rc']} (log: {log_path})")
                elif tool.startswith("sp") and r.get("verdict") != "ok":
                    warn(f"{set_name} rep {rep} {tool}: report.json verdict {r.get('verdict')!r}")
                # Cheap correctness check, first repetition only (untimed).
                if rep == 1 and tool == "seed" and r["rc"] == 0:
                    seed_ref = snapshot(out)
                    if "floor" in TOOLS:
                        write_floor_list(os.path.join(out, "data"), set_dir)
                elif rep == 1 and tool.startswith("sp") and r["rc"] == 0:
                    if seed_ref is None:
                        warn(f"{set_name}: no seed output to check {tool} against (add 'seed' to BENCH_TOOLS)")
                    else:
                        compare(seed_ref, snapshot(out), out, os.path.join(out_root, "seed", "data"),
                                f"{set_name} {tool}")
        log(f"set {set_name} done; deleting its outputs (untimed)")
        rm_rf(out_root)
        rm_rf(trash)
        sync()
        all_rows[set_name] = summarize(set_name, st, runs)
        for tool, row in all_rows[set_name].items():
            if row["median"] and row["others_cpu"] is not None and row["others_cpu"] > max(0.5, 0.5 * row["median"]):
                warn(f"{set_name} {tool}: noisy? other processes used {row['others_cpu'] / row['median']:.1f} "
                     f"cores on average during the runs (median; this includes the kernel's writeback "
                     f"threads, which a tool that syncs its output keeps busy)")
        raw[set_name] = {"stats": st, "runs": runs}

    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump({"date": started.isoformat(), "workers": WORKERS, "reps": REPS, "idle_wait": IDLE_WAIT,
                   "settle": SETTLE, "defer_rm_files": DEFER_RM_FILES, "rows": all_rows,
                   "raw": raw, "warnings": WARNINGS,
                   "caches_dropped": CACHES_DROPPED}, f, indent=1, default=str)
    return write_report(sets, all_rows, all_stats, raw, started)


def report_only():
    """Re-renders the results file from WORK/results.json (no timing): `bench.py --report-only`."""
    with open(os.path.join(WORK, "results.json")) as f:
        saved = json.load(f)
    global WORKERS, REPS, IDLE_WAIT, SETTLE, DEFER_RM_FILES
    WORKERS, REPS = saved["workers"], saved["reps"]
    CACHES_DROPPED[:] = saved.get("caches_dropped", [])
    IDLE_WAIT = saved.get("idle_wait", IDLE_WAIT)
    SETTLE = saved.get("settle", SETTLE)
    DEFER_RM_FILES = saved.get("defer_rm_files", DEFER_RM_FILES)
    WARNINGS.extend(saved.get("warnings", []))
    sets, all_rows, all_stats, raw = [], {}, {}, saved["raw"]
    suffix = "-quick" if QUICK else ""
    for name, r in raw.items():
        sets.append((name, os.path.join(WORK, "data", name + suffix)))
        all_stats[name] = r["stats"]
        all_rows[name] = summarize(name, r["stats"], r["runs"])
    started = datetime.datetime.fromisoformat(saved["date"])
    return write_report(sets, all_rows, all_stats, raw, started)


def write_report(sets, all_rows, all_stats, raw, started):
    table = table_md(all_rows, all_stats)
    print()
    print(table)
    print()
    print(ratios_md(all_rows))
    print()
    print(targets_md(all_rows))
    data_lines = "\n".join(
        f"- **{s}**: {st['shards']} shards, {st['members']:,} members ({st['json_files']:,} JSON), "
        f"{st['tar_bytes'] / 1e6:,.1f} MB of tar (`shardprep generate`: "
        f"{open(os.path.join(d, 'stamp')).read().strip()})"
        for (s, d), st in zip(sets, all_stats.values())
    )
    chart = write_chart(all_rows, os.path.splitext(RESULTS)[0] + ".png")
    with open(RESULTS, "w") as f:
        f.write(f"# shardprep benchmark results{' (QUICK smoke run)' if QUICK else ''}\n\n")
        f.write(f"Date: {started:%Y-%m-%d %H:%M %Z}. Made by `bench/run.sh` "
                f"(BENCH_REPS={REPS}, alternating repetitions; medians shown).\n\n")
        f.write("## Machine\n\n" + machine_md() + "\n\n")
        f.write("## Data\n\n" + data_lines + "\n\n")
        f.write("## Results\n\n" + table + "\n\n")
        f.write(f"Before each timed run: earlier outputs cleared (those with ≥ {DEFER_RM_FILES:,} files moved aside, "
                "deleted at the end of the set: see README), `sync`, "
                + (f"{SETTLE:.0f} s pause, " if SETTLE else "")
                + ("page/dentry/inode caches dropped, then the shards and programs read back in "
                   "(every run starts from the same cache state: see README), "
                   + (f"{WARM_MEM_MB:,} MB of memory touched and freed (the same pool of host-backed "
                      "free pages for every run: see warm_memory), " if WARM_MEM_MB > 0 else
                      "no memory warmed (BENCH_WARM_MEM_MB=0), ")
                   if CACHES_DROPPED and all(CACHES_DROPPED) else
                   "caches NOT dropped (not root, or BENCH_DROP_CACHES=0: later runs may pay for "
                   "earlier ones' cached inodes), ")
                + f"wait for a quiet machine (≤ {IDLE_WAIT:.0f} s).\n\n")
        f.write("files/s = tar members / median s; MB/s = shard bytes / median s. "
                "\"+flush\" = the `sync` right after the run (not in the median): tar, the seed, the "
                "create-only program and `run`'s default `--data-sync none` leave their data in the page "
                "cache; `--data-sync shard` writes each shard's files back before its commit (its +flush is "
                "≈0 and its wall time includes the writeback), so the ratios \"with +flush\" compare like with like. "
                "See bench/README.md for what each column means.\n\n")
        f.write("Ratios of medians:\n\n" + ratios_md(all_rows) + "\n\n")
        if chart:
            f.write(f"![median wall time]({os.path.basename(chart)})\n\n")
        f.write("## Targets\n\n" + targets_md(all_rows) + "\n\n")
        f.write("## Checks and warnings\n\n")
        if WARNINGS:
            f.write("\n".join(f"- {w}" for w in WARNINGS) + "\n\n")
        else:
            f.write("- none: shardprep's output matched the seed's (rows, .txt set, members, "
                    "parquet values, sampled captions) and every run exited 0.\n\n")
        f.write("<details><summary>every repetition (s)</summary>\n\n")
        for s, rows in all_rows.items():
            for tool, r in rows.items():
                f.write(f"- {s} {tool}: {r['walls']}\n")
        f.write("\nothers' CPU s during each run (noise from the shared machine):\n\n")
        for s in raw:
            for tool in TOOLS:
                xs = [round(r["others_cpu"], 1) for r in raw[s]["runs"] if r["tool"] == tool]
                if xs:
                    f.write(f"- {s} {tool}: {xs}\n")
        waited = sum(r["waited_quiet"] for s in raw for r in raw[s]["runs"])
        f.write(f"\nTime spent waiting for a quiet machine before runs (untimed): {waited:.0f} s.\n")
        f.write("\n</details>\n")
    log(f"wrote {RESULTS}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(report_only() if "--report-only" in sys.argv[1:] else main())
