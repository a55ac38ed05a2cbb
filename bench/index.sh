#!/usr/bin/env bash
# Index mode vs `webshart extract-metadata --include-image-geometry` on the
# same shards, cold page cache for the shards (posix_fadvise DONTNEED on each
# tar before each run, no root needed), reporting seconds, files/s, MB/s
# read (read_bytes from the device, rchar through read calls, both from
# /proc/<pid>/io) and peak RSS.
#
#   bench/index.sh [WORKDIR]      env: WS_VENV (webshart venv), REPS (1),
#                                 SMALL="shards samples" (4 4000), BIG="shards samples" (2 150)
# Until `shardprep run --mode index` exists the index pass runs through the
# worker crate's `index_dir` example (one process, shards one after another).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/shardprep-index-bench}"
venv="${WS_VENV:-$repo/.venv-webshart}"
py="$venv/bin/python"
reps="${REPS:-1}"
read -r small_n small_s <<<"${SMALL:-4 4000}"
read -r big_n big_s <<<"${BIG:-2 150}"
mkdir -p "$work"
(cd "$repo" && cargo build -q --release -p shardprep-worker --example index_dir)
indexer="$repo/target/release/examples/index_dir"

drop_cache() { # evicts the shards from the page cache
  "$py" - "$@" <<'PY'
import os, sys, pathlib
for p in pathlib.Path(sys.argv[1]).rglob("*.tar"):
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
PY
}

# measure LABEL SET_DIR FILES BYTES -- CMD...: runs CMD, samples its /proc io and RSS (children included).
measure() {
  local label=$1 dir=$2 files=$3 bytes=$4; shift 5
  drop_cache "$dir"
  local start end
  start=$(date +%s.%N)
  "$@" >"$work/$label.out" 2>&1 &
  local pid=$! rb=0 rc=0 rss=0
  while kill -0 "$pid" 2>/dev/null; do
    local pids="$pid $(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ')"
    local s_rb=0 s_rc=0 s_rss=0
    for p in $pids; do
      [ -r "/proc/$p/io" ] || continue
      s_rb=$((s_rb + $(awk '/^read_bytes/{print $2}' "/proc/$p/io" 2>/dev/null || echo 0)))
      s_rc=$((s_rc + $(awk '/^rchar/{print $2}' "/proc/$p/io" 2>/dev/null || echo 0)))
      s_rss=$((s_rss + $(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    [ "$s_rb" -gt "$rb" ] && rb=$s_rb
    [ "$s_rc" -gt "$rc" ] && rc=$s_rc
    [ "$s_rss" -gt "$rss" ] && rss=$s_rss
    sleep 0.05
  done
  wait "$pid" || { echo "$label failed:"; tail -5 "$work/$label.out"; return 1; }
  end=$(date +%s.%N)
  awk -v l="$label" -v t0="$start" -v t1="$end" -v f="$files" -v b="$bytes" -v rb="$rb" -v rc="$rc" -v rss="$rss" 'BEGIN {
    t = t1 - t0; printf "%-28s %8.2f s %10.0f files/s  read_bytes %9.1f MB (%7.1f MB/s)  rchar %9.1f MB  of %8.1f MB  peak RSS %6.1f MiB\n",
      l, t, f / t, rb / 1e6, rb / 1e6 / t, rc / 1e6, b / 1e6, rss / 1024 }'
}

run_set() {
  local name=$1 n=$2 s=$3 dir="$work/$1"
  if [ ! -f "$dir/.complete-$n-$s" ]; then
    rm -rf "$dir"; "$py" "$repo/bench/index_sets.py" "$dir" "$name" "$n" "$s"; touch "$dir/.complete-$n-$s"
  fi
  local files=$((n * s * 2)) bytes
  bytes=$(du -cb "$dir"/*.tar | tail -1 | cut -f1)
  echo "== $name set: $n shards x $s samples, $((bytes / 1000000)) MB"
  for r in $(seq "$reps"); do
    rm -rf "$work/ws-$name" "$work/ws-$name-ckpt" "$work/sp-$name"
    measure "webshart-$name-$r" "$dir" "$files" "$bytes" -- \
      "$venv/bin/webshart" extract-metadata --source "$dir" --destination "$work/ws-$name" \
      --checkpoint-dir "$work/ws-$name-ckpt" --include-image-geometry
    measure "shardprep-index-$name-$r" "$dir" "$files" "$bytes" -- "$indexer" "$dir" "$work/sp-$name"
  done
}

echo "host: $(nproc) CPUs, $(uname -r); webshart $("$py" -c 'import webshart; print(webshart.__version__)')"
run_set small "$small_n" "$small_s"
run_set big "$big_n" "$big_s"
