#!/usr/bin/env python3
"""Index mode (range requests) vs extract mode (one streamed GET per shard)
on the same remote shards: a fake Hub on 127.0.0.1 (tests/webshart/fake_hub.py,
Range support, counting the tar bytes it sends) serves the two sets of
bench/index.sh; shardprep reads it as hf://datasets/bench/SET/data through
HF_ENDPOINT. Prints a Markdown table: seconds, bytes the server sent, tar
requests, MB/s of shard data covered.

    python bench/index_remote.py [WORKDIR]    env: SHARDPREP_BIN (target/release/shardprep),
                                              SMALL="4 4000", BIG="2 150", WORKERS (2), REPS (1)
Needs Pillow (the webshart venv has it) for the sets.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "webshart"))
import fake_hub  # noqa: E402


def make_set(work, kind, shards, samples):
    data = work / kind / "repo" / "data"
    if not data.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "index_sets.py"), str(data), kind, str(shards),
                        str(samples)], check=True)
    return data.parent


def run(exe, hub, port, kind, mode, out, workers):
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_") and k != "HF_TOKEN"}
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{port}", "NO_PROXY": "127.0.0.1,localhost"})
    cmd = [str(exe), "run", "--input", f"hf://datasets/bench/{kind}/data", "--output", str(out),
           "--mode", mode, "--workers", str(workers)]
    sent0, req0 = hub.tar_bytes_sent, hub.tar_requests
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return secs, hub.tar_bytes_sent - sent0, hub.tar_requests - req0


def main():
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/shardprep-index-remote-bench")
    exe = Path(os.environ.get("SHARDPREP_BIN", REPO / "target" / "release" / "shardprep"))
    workers = int(os.environ.get("WORKERS", "2"))
    reps = int(os.environ.get("REPS", "1"))
    sets = {"small": os.environ.get("SMALL", "4 4000"), "big": os.environ.get("BIG", "2 150")}
    print("| set | mode | s | bytes sent by the server | % of the tars | tar requests | MB/s of shards |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind, dims in sets.items():
        shards, samples = map(int, dims.split())
        repo = make_set(work, kind, shards, samples)
        total = sum(p.stat().st_size for p in repo.rglob("*.tar"))
        hub = fake_hub.Hub(repo, f"bench/{kind}")
        port = hub.serve()
        for mode in ("index", "extract"):
            best = None
            for _ in range(reps):
                r = run(exe, hub, port, kind, mode, work / kind / f"out-{mode}", workers)
                best = r if best is None or r[0] < best[0] else best
            secs, sent, requests = best
            label = f"{kind}: {shards} x {samples}, {total / 1e6:.0f} MB" if mode == "index" else ""
            print(f"| {label} | {mode} | {secs:.2f} | {sent / 1e6:.1f} MB | {100 * sent / total:.1f}% "
                  f"| {requests} | {total / 1e6 / secs:.0f} |", flush=True)
        hub.close()


if __name__ == "__main__":
    main()
