#!/usr/bin/env bash
# Index mode vs `webshart extract-metadata --include-image-geometry` on the
# same shards, cold page cache for the shards (posix_fadvise DONTNEED on each
# tar before each run, no root needed), reporting seconds, files/s, MB/s
# read (read_bytes from the device, rchar through read calls, both from
# /proc/<pid>/io) and peak RSS.
#
#   bench/index.sh [WORKDIR]      env: WS_VENV (webshart venv), REPS (1),
#                                 SMALL="shards samples" (4 4000), BIG="shards samples" (2 150)
#                                 WORKERS (2): workers of `shardprep run`
#                                 SHARDPREP_INDEX_CMD: another indexer, a command with
#                                 {input} and {output} (default: the real CLI,
#                                 `shardprep run --input {input} --output {output} --mode index`)
# The shardprep row is the whole job: coordinator, workers, gRPC, commit,
# parquet merge, report and verification.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/shardprep-index-bench}"
venv="${WS_VENV:-$repo/.venv-webshart}"
py="$venv/bin/python"
reps="${REPS:-1}"
read -r small_n small_s <<<"${SMALL:-4 4000}"
read -r big_n big_s <<<"${BIG:-2 150}"
mkdir -p "$work"
if ! "$py" -c 'import webshart, PIL' 2>/dev/null; then
  echo "bench/index.sh: $venv needs webshart 0.6.0 and pillow; make it with" >&2
  echo "  python3.12 -m venv $venv && $venv/bin/pip install webshart==0.6.0 pillow" >&2
  echo "(or point WS_VENV at a venv that has them)" >&2
  exit 2
fi
workers="${WORKERS:-2}"
if [ -z "${SHARDPREP_INDEX_CMD:-}" ]; then
  (cd "$repo" && cargo build -q --release --bin shardprep)
  SHARDPREP_INDEX_CMD="$repo/target/release/shardprep run --input {input} --output {output} --mode index --workers $workers"
fi
# indexer DIR OUT: runs the index command on one set.
indexer() {
  local cmd=${SHARDPREP_INDEX_CMD//\{input\}/$1}
  cmd=${cmd//\{output\}/$2}
  env -u SHARDPREP_INDEX_CMD bash -c "$cmd"
}

drop_cache() { # evicts the shards from the page cache
  "$py" - "$@" <<'PY'
import os, sys, pathlib
for p in pathlib.Path(sys.argv[1]).rglob("*.tar"):
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
PY
}

# descendants PID: PID and all its descendants.
descendants() {
  local p=$1
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null); do descendants "$c"; done
}

# measure LABEL SET_DIR FILES BYTES -- CMD...: runs CMD, samples the /proc io and RSS of it
# and all its descendants (each process's last seen counters are kept after it exits).
# "peak RSS" is the largest single process (the issue's worker target), not a sum.
measure() {
  local label=$1 dir=$2 files=$3 bytes=$4; shift 5
  drop_cache "$dir"
  local start end
  start=$(date +%s.%N)
  # The end is stamped as the command returns: the sampling loop below
  # wakes every 50 ms and would round a short run up to it.
  ( rc=0; "$@" >"$work/$label.out" 2>&1 || rc=$?; date +%s.%N >"$work/$label.end"; exit "$rc" ) &
  local pid=$! rss=0
  declare -A prb=() prc=()
  while kill -0 "$pid" 2>/dev/null; do
    for p in $(descendants "$pid"); do
      [ -r "/proc/$p/io" ] || continue
      local v
      v=$(awk '/^read_bytes/{print $2}' "/proc/$p/io" 2>/dev/null || echo 0); [ -n "$v" ] && prb[$p]=$v
      v=$(awk '/^rchar/{print $2}' "/proc/$p/io" 2>/dev/null || echo 0); [ -n "$v" ] && prc[$p]=$v
      v=$(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ -n "$v" ] && [ "$v" -gt "$rss" ] && rss=$v
    done
    sleep 0.05
  done
  wait "$pid" || { echo "$label failed:"; tail -5 "$work/$label.out"; return 1; }
  end=$(cat "$work/$label.end")
  local rb=0 rc=0 p
  for p in "${!prb[@]}"; do rb=$((rb + prb[$p])); done
  for p in "${!prc[@]}"; do rc=$((rc + prc[$p])); done
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
    measure "shardprep-index-$name-$r" "$dir" "$files" "$bytes" -- indexer "$dir" "$work/sp-$name"
  done
}

echo "host: $(nproc) CPUs, $(uname -r); webshart $("$py" -c 'import webshart; print(webshart.__version__)')"
run_set small "$small_n" "$small_s"
run_set big "$big_n" "$big_s"
