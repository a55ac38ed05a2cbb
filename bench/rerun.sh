#!/usr/bin/env bash
# What the judge's checks cost (issue 26): a no-op re-run of a finished job, plain and
# --deep, and `verify` at both depths, on the small bench set (10 shards x 10,000 samples,
# bench/sets.sh), in both modes. Page cache warm (the output was just written), as after a
# job; the cold numbers would add the disk's reads of the metadata and, for --deep, the bytes.
# Knobs: BENCH_WORK (default bench/work), BENCH_NO_BUILD=1, BENCH_REPS (default 3),
#        RERUN_RESULTS (default bench/RERUN-COST.md).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
export BENCH_WORK="$(realpath -m "${BENCH_WORK:-$BENCH_DIR/work}")"
export BENCH_QUICK="${BENCH_QUICK:-0}"
export BENCH_SETS=small
REPS="${BENCH_REPS:-3}"
RESULTS="${RERUN_RESULTS:-$BENCH_DIR/RERUN-COST.md}"
log() { printf '[rerun] %s\n' "$*" >&2; }
# shellcheck source=bench/sets.sh
source "$BENCH_DIR/sets.sh"

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release --bin shardprep)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardprep"
make_sets "$BIN"
SHARDS="${BENCH_SET_DIRS#small=}/shards"

# Median wall seconds of REPS runs of "$@" (each must exit 0).
median_secs() {
    local i t times=()
    for ((i = 0; i < REPS; i++)); do
        t=$( { /usr/bin/time -f %e "$@" >/dev/null 2>/dev/null; } 2>&1 | tail -1)
        times+=("$t")
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((REPS + 1) / 2))p"
}

row() {  # mode label command...
    local mode="$1" what="$2"
    shift 2
    printf '| %s | %s | %s |\n' "$mode" "$what" "$(median_secs "$@")"
}

{
    echo "# What the judge's checks cost (issue 26)"
    echo
    echo "Date: $(date -u +%F). Set: small (10 shards x 10,000 samples, 1 KiB images: 100,000"
    echo "samples, 200,000 files + captions in data/). Median of $REPS, page cache warm, 2 workers."
    echo "Commit: $(git -C "$ROOT" rev-parse --short HEAD). Machine: $(nproc) cores, shared."
    echo
    echo "| mode | command | wall s |"
    echo "|---|---|---:|"
    for mode in extract index; do
        out="$BENCH_WORK/rerun-$mode"
        rm -rf "$out"
        start=$(date +%s.%N)
        "$BIN" run --input "$SHARDS" --output "$out" --workers 2 --mode "$mode" >/dev/null 2>&1
        first=$(echo "$(date +%s.%N) - $start" | bc)
        printf '| %s | the job itself (once) | %.2f |\n' "$mode" "$first"
        row "$mode" "\`run\` again (no-op, plain)" "$BIN" run --input "$SHARDS" --output "$out" --workers 2 --mode "$mode"
        row "$mode" "\`run --deep\` again (no-op)" "$BIN" run --input "$SHARDS" --output "$out" --workers 2 --mode "$mode" --deep
        row "$mode" "\`verify\`" "$BIN" verify "$out"
        row "$mode" "\`verify --deep\`" "$BIN" verify "$out" --deep
        rm -rf "$out"
    done
} > "$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
