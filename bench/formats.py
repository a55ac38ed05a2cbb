"""--index-format beside the tools each trainer ships, on the same shards:
`shardprep run --mode index` (webshart alone, then all four formats),
`energon prepare` (megatron-energon 7.4.1) and DALI's `wds2idx` (one per
tar, WORKERS at a time). Same workers for all, the shards' pages dropped
before every run (fsync + posix_fadvise DONTNEED on each tar), the tools
alternating in a rotating order, REPS runs each. Reports the median wall
time, samples/s, CPU seconds (user+sys of the whole process tree) and the
bytes read from the disk (ru_inblock of the process tree).

    python bench/formats.py WORKDIR [--shards 4] [--samples 25000] [--reps 3] [--workers 2]
                            [--shardprep-only]   (no energon/DALI rows: quick A/B loops)
    env: SHARDPREP_BIN (default target/release/shardprep), ENERGON (the `energon` CLI;
         its row is skipped without it), WDS2IDX (default .venv-formats/bin/wds2idx),
         SHARDPREP_BASE (optional: a second shardprep binary, e.g. main's build, whose two
         rows alternate with the others in the same run for a before/after)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def drop_pages(folder):
    for p in Path(folder).rglob("*.tar"):
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run(cmd, **kw):
    """Wall seconds, CPU seconds and bytes read from disk of `cmd` and everything it waited for."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{cmd} failed ({code}):\n{err.decode(errors='replace')[-3000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_inblock * 512


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--samples", type=int, default=25000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shardprep-only", action="store_true",
                    help="only the shardprep rows (no energon prepare, no wds2idx)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = os.environ.get("SHARDPREP_BIN", str(REPO / "target/release/shardprep"))
    energon = None if a.shardprep_only else os.environ.get("ENERGON")
    wds2idx = os.environ.get("WDS2IDX", str(REPO / ".venv-formats/bin/wds2idx"))
    base = os.environ.get("SHARDPREP_BASE")
    shards = work / "set"
    if not shards.is_dir():
        subprocess.run([exe, "generate", "--output", str(shards), "--shards", str(a.shards),
                        "--samples", str(a.samples), "--image-bytes", "1024"], check=True)
    tars = sorted(shards.glob("*.tar"))
    total = a.shards * a.samples
    w = str(a.workers)

    def shardprep(formats, binary=exe, tag=""):
        out = work / f"out{tag}-{formats.replace(',', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        return [binary, "run", "--input", str(shards), "--output", str(out), "--mode", "index",
                "--workers", w, "--index-format", formats]

    def energon_prepare():
        shutil.rmtree(shards / ".nv-meta", ignore_errors=True)
        for p in shards.glob("*.tar.idx"):
            p.unlink()
        return [energon, "prepare", str(shards), "--non-interactive", "--split-parts", "train:.*",
                "--num-workers", w, "--skip-dataset-yaml", "--force-overwrite", "--no-progress"]

    def dali_wds2idx():
        out = work / "wds2idx"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        script = " ".join(f"{t} {out / t.with_suffix('.idx').name}" for t in tars)
        return ["bash", "-c", f"echo {script} | xargs -n2 -P{w} {wds2idx}"]

    tools = {"webshart": lambda: shardprep("webshart"),
             "all four": lambda: shardprep("webshart,energon,dali,wids")}
    if not a.shardprep_only:
        tools["dali wds2idx"] = dali_wds2idx
    if energon:
        tools["energon prepare"] = energon_prepare
    if base:
        tools["webshart (base)"] = lambda: shardprep("webshart", base, "-base")
        tools["all four (base)"] = lambda: shardprep("webshart,energon,dali,wids", base, "-base")
    names = list(tools)
    results = {n: [] for n in names}
    for rep in range(a.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in order:
            cmd = tools[n]()
            drop_pages(shards)
            results[n].append(run(cmd))
            print(n, rep, "wall %.2f s cpu %.2f s read %.1f MB" % (results[n][-1][0], results[n][-1][1],
                                                                    results[n][-1][2] / 1e6), flush=True)
    if energon:
        shutil.rmtree(shards / ".nv-meta", ignore_errors=True)
        for p in shards.glob("*.tar.idx"):
            p.unlink()
    size = sum(t.stat().st_size for t in tars)
    print(f"\n{a.shards} shards x {a.samples} samples ({size / 1e6:.0f} MB), {a.workers} workers, "
          f"median of {a.reps}, pages dropped before each run\n")
    print("| tool | wall s | samples/s | CPU s | read from disk MB |")
    print("|---|---|---|---|---|")
    med = {}
    for n in names:
        wall = statistics.median(r[0] for r in results[n])
        cpu = statistics.median(r[1] for r in results[n])
        read = statistics.median(r[2] for r in results[n])
        med[n] = wall
        print(f"| {n} | {wall:.2f} | {total / wall:,.0f} | {cpu:.2f} | {read / 1e6:.1f} |")
    print(f"\nall four / webshart alone: {med['all four'] / med['webshart']:.2f}x")
    if energon:
        print(f"energon prepare / all four: {med['energon prepare'] / med['all four']:.1f}x")
    if "dali wds2idx" in med:
        print(f"wds2idx / all four: {med['dali wds2idx'] / med['all four']:.1f}x")
    if base:
        print(f"base: all four / webshart alone: {med['all four (base)'] / med['webshart (base)']:.2f}x")
        if energon:
            print(f"base: energon prepare / all four: "
                  f"{med['energon prepare'] / med['all four (base)']:.1f}x")
    (work / "formats-results.json").write_text(json.dumps({"args": vars(a), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
