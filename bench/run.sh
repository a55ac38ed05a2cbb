#!/usr/bin/env bash
# Benchmark harness entry point: shardprep vs plain `tar xf` vs the seed's pipeline.
# See bench/README.md. Knobs (env vars):
#   BENCH_REPS=3            repetitions per tool (alternating, order rotated each repetition)
#   BENCH_SETS="small big"  which data sets to run
#   BENCH_QUICK=1           tiny smoke version (2x500 small, 2x8 big; 1 rep; results in bench/work/)
#   BENCH_WORKERS=N         workers for the "spN" row (default: nproc)
#   BENCH_TOOLS="tar seed sp1 spN spNs floor"  subset/order of tools (floor needs seed before it)
#   BENCH_DROP_CACHES=0     don't drop the kernel's caches before each timed run (root only)
#   BENCH_NO_BUILD=1        skip `cargo build --release`
#   BENCH_REGEN=1           regenerate shards even if the stamp matches
#   BENCH_DEFER_RM_FILES=20000  outputs with this many files are deleted at the end of the set
#   BENCH_SETTLE=0          seconds to pause after clearing outputs, before each timed run
#   BENCH_IDLE_WAIT=120     max seconds to wait for a quiet machine before each run
#   BENCH_CHART=0           don't try to pip-install matplotlib for bench/RESULTS.png
#   BENCH_WORK=DIR          work dir (default bench/work; gitignored)
#   VENV=DIR                reuse a venv with pandas + pyarrow (default bench/work/.venv)
#   BENCH_RESULTS=FILE      where to write the markdown results
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
export BENCH_WORK="$(realpath -m "${BENCH_WORK:-$BENCH_DIR/work}")"
export BENCH_QUICK="${BENCH_QUICK:-0}"
if [[ "$BENCH_QUICK" == 1 ]]; then
    export BENCH_REPS="${BENCH_REPS:-1}"
    export BENCH_RESULTS="${BENCH_RESULTS:-$BENCH_WORK/RESULTS-quick.md}"
else
    export BENCH_REPS="${BENCH_REPS:-3}"
    export BENCH_RESULTS="${BENCH_RESULTS:-$BENCH_DIR/RESULTS.md}"
fi
export BENCH_SETS="${BENCH_SETS:-small big}"
export BENCH_WORKERS="${BENCH_WORKERS:-$(nproc)}"
export BENCH_TOOLS="${BENCH_TOOLS:-tar seed sp1 spN spNs floor}"

log() { printf '[bench] %s\n' "$*" >&2; }
mkdir -p "$BENCH_WORK"

# 1. Build (shared target dir at the workspace root; never cleaned here).
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
fi
SRC_BIN="${SP_BIN:-$ROOT/target/release/shardprep}"
[[ -x "$SRC_BIN" ]] || { log "no binary at $SRC_BIN"; exit 1; }
# Others may rebuild target/ while the bench runs: time a private copy.
mkdir -p "$BENCH_WORK/bin"
cp -f "$SRC_BIN" "$BENCH_WORK/bin/shardprep"
export SP_BIN="$BENCH_WORK/bin/shardprep"
dirty=""; [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] && dirty=" + uncommitted changes in the work tree"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty (at copy time)" > "$SP_BIN.commit"

# The data sets' and create-floor program's helpers (bench/sets.sh).
source "$BENCH_DIR/sets.sh"
# The create-floor program (only creating the output files; see create_floor.c).
build_floor || log "gcc not found or failed: no create-floor row"

# 2. Python venv with pandas + pyarrow (the seed's scripts and the checks need them).
VENV="$(realpath -m "${VENV:-$BENCH_WORK/.venv}")"
if ! "$VENV/bin/python" -c 'import pandas, pyarrow' 2>/dev/null; then
    log "creating venv $VENV (pandas, pyarrow)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet pandas pyarrow
fi
if [[ "${BENCH_CHART:-1}" == 1 ]] && ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "trying to install matplotlib (optional; BENCH_CHART=0 to skip)"
    timeout 180 "$VENV/bin/pip" install --quiet matplotlib >/dev/null 2>&1 \
        || log "matplotlib not installed; no chart"
fi
export BENCH_PY="$VENV/bin/python"

# 3. Deterministic data sets, regenerated only when the parameters change (bench/sets.sh).
make_sets "$SP_BIN"

# 4. Time, check, report.
exec "$BENCH_PY" "$BENCH_DIR/bench.py"
