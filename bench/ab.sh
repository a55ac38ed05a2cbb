#!/usr/bin/env bash
# Side-by-side benchmark of shardprep versions/flags (bench/README.md, "A/B").
#   AB_VARIANTS='old=/path/bin; new=/path/bin2; new+decode=/path/bin2:--check-images decode'
#                          LABEL=BINARY[:extra flags of `run`], separated by ';'
#                          (LABEL=@tar: the `tar xf` loop; LABEL=@floor:N: create_floor on N threads)
#   AB_BASELINE=old        label the ratios are against (default: the first)
#   AB_REPS=3              repetitions (AB_REPS_small / AB_REPS_big per set)
#   AB_GEN_BIN=BIN         binary that generates missing data sets (default: the last variant's)
#   AB_RESULTS=FILE        markdown out (default bench/AB-RESULTS.md; quick: bench/work/AB-RESULTS-quick.md)
#   AB_SAMPLE_MS=50        /proc sampling interval for the workers' VmHWM
#   AB_SKIP_<set>="label"  variants not run on that set (e.g. AB_SKIP_small=new+decode)
#   AB_RM_AT_END=0         keep the large outputs until the timing is over (deleted after the
#                          results are written; AB_KEEP_LATER=1: left in BENCH_WORK/ab-later)
#   AB_MIN_FREE_GB=8       below this, kept outputs are deleted at once (a warning says so)
#   AB_FRESH_FS=1          (root) every run writes into a new ext4 on a loop device (AB_FS_GB=6,
#                          AB_FS_INODES=600000), deleted after it: see README
# and from run.sh: BENCH_SETS, BENCH_QUICK, BENCH_WORKERS, BENCH_WORK, BENCH_IDLE_WAIT,
# BENCH_IDLE_MAX_BUSY, BENCH_DROP_CACHES, BENCH_DEFER_RM_FILES, BENCH_REGEN.
# Needs only python3 (no venv): the binaries are given, nothing is built.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_WORK="$(realpath -m "${BENCH_WORK:-$BENCH_DIR/work}")"
export BENCH_QUICK="${BENCH_QUICK:-0}"
if [[ "$BENCH_QUICK" == 1 ]]; then
    export AB_REPS="${AB_REPS:-1}"
    export AB_RESULTS="${AB_RESULTS:-$BENCH_WORK/AB-RESULTS-quick.md}"
else
    export AB_REPS="${AB_REPS:-3}"
    export AB_RESULTS="${AB_RESULTS:-$BENCH_DIR/AB-RESULTS.md}"
fi
export BENCH_SETS="${BENCH_SETS:-small big}"
export BENCH_WORKERS="${BENCH_WORKERS:-$(nproc)}"
: "${AB_VARIANTS:?set AB_VARIANTS='LABEL=BINARY[:flags]; ...' (see the top of bench/ab.sh)}"
export AB_VARIANTS

log() { printf '[ab] %s\n' "$*" >&2; }
mkdir -p "$BENCH_WORK"

if [[ -z "${AB_GEN_BIN:-}" ]]; then
    last="${AB_VARIANTS%;}"; last="${last##*;}"; last="${last#*=}"; AB_GEN_BIN="${last%%:*}"
    AB_GEN_BIN="$(echo "$AB_GEN_BIN" | xargs)"
fi
[[ -x "$AB_GEN_BIN" ]] || { log "no generator binary at $AB_GEN_BIN"; exit 1; }
source "$BENCH_DIR/sets.sh"
# `LABEL=@floor:N` variants need the create-floor program (bench/create_floor.c).
if [[ "$AB_VARIANTS" == *@floor* ]]; then
    build_floor || { log "gcc could not build bench/create_floor.c: no @floor variant"; exit 1; }
fi
make_sets "$AB_GEN_BIN"

rc=0
python3 "$BENCH_DIR/ab.py" "$@" || rc=$?
# Outputs kept with AB_RM_AT_END=0: deleted now, after the timing (can take minutes).
if [[ -d "$BENCH_WORK/ab-later" && "${AB_KEEP_LATER:-0}" != 1 ]]; then
    log "deleting the kept outputs in $BENCH_WORK/ab-later"
    rm -rf "$BENCH_WORK/ab-later"
fi
exit "$rc"
