#!/usr/bin/env bash
# Memory benchmark: peak RSS of a worker (target ≤ 64 MiB whatever the shard's
# size or member count) and of the coordinator (≤ 128 MiB with 10,000 shards).
#
#   bash bench/memory.sh            # → bench/MEMORY.md
#
# Cases (each run twice: inside `shardprep run --workers 1`, and by hand as
# `shardprep coordinator` + `shardprep worker` under /usr/bin/time):
#   huge  — one shard holding ONE 2 GiB image member (+ its JSON), image first
#   many  — one shard of 100,000 samples × 2 members = 200,000 members (64-byte images)
# Then the coordinator at 10,000 shards: `cargo bench -p shardprep-coordinator --bench scale`
# (scheduling scenario), whose table is copied into MEMORY.md.
#
# Knobs (env): MEM_WORK (bench/work/memory), MEM_RESULTS (bench/MEMORY.md),
# MEM_HUGE_BYTES (2147483648), MEM_SAMPLES (100000), MEM_CASES ("huge many"),
# MEM_NO_BUILD=1 (skip cargo build), MEM_SCALE=0 (skip the coordinator scale bench),
# MEM_KEEP=1 (keep the generated shards), SP_BIN (binary; default target/release/shardprep).
# Disk: the huge case needs ≈ 2 × MEM_HUGE_BYTES free (the shard + its extracted copy);
# everything generated is deleted at the end unless MEM_KEEP=1.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
WORK="$(realpath -m "${MEM_WORK:-$BENCH_DIR/work/memory}")"
RESULTS="$(realpath -m "${MEM_RESULTS:-$BENCH_DIR/MEMORY.md}")"
HUGE_BYTES="${MEM_HUGE_BYTES:-2147483648}"
SAMPLES="${MEM_SAMPLES:-100000}"
CASES="${MEM_CASES:-huge many}"
WORKER_TARGET_MIB=64
COORD_TARGET_MIB=128
TIME=/usr/bin/time

log() { printf '[memory] %s\n' "$*" >&2; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1])/1048576:.1f}')" "$1"; }

mkdir -p "$WORK"
WORK_RUNS="$WORK/runs"
rm -rf "$WORK_RUNS"
mkdir -p "$WORK_RUNS"

# 1. Build (shared target/, never cleaned) and use a private copy of the binary.
if [[ "${MEM_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release --bin shardprep"
    (cd "$ROOT" && cargo build --release --quiet --bin shardprep)
fi
SRC_BIN="${SP_BIN:-$ROOT/target/release/shardprep}"
[[ -x "$SRC_BIN" ]] || { log "no binary at $SRC_BIN"; exit 1; }
mkdir -p "$WORK/bin"
cp -f "$SRC_BIN" "$WORK/bin/shardprep"
SP="$WORK/bin/shardprep"
[[ -x "$TIME" ]] || { log "$TIME is missing (apt-get install time)"; exit 1; }

# 2. Disk check before writing gigabytes.
avail=$(df -B1 --output=avail "$WORK" | tail -1 | tr -d ' ')
need=$(( HUGE_BYTES * 2 + (1 << 30) ))
if [[ " $CASES " == *" huge "* ]] && (( avail < need )); then
    log "only $(( avail >> 20 )) MiB free in $WORK; the huge case needs $(( need >> 20 )) MiB (set MEM_WORK elsewhere or MEM_HUGE_BYTES smaller)"
    exit 1
fi
log "free space in $WORK: $(( avail >> 30 )) GiB"

# 3. Inputs.
make_huge() {  # $1 = dir
    mkdir -p "$1"
    log "writing a shard with one $(( HUGE_BYTES >> 20 )) MiB member into $1"
    python3 - "$1/huge-000000.tar" "$HUGE_BYTES" <<'PY'
import json, os, sys, tarfile
path, size = sys.argv[1], int(sys.argv[2])
block = bytearray(os.urandom(1 << 20))
block[:8] = b"\x89PNG\r\n\x1a\n"
block = bytes(block)
def header(name, n):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = n, 0o644, 1_700_000_000
    return ti.tobuf(tarfile.GNU_FORMAT)
def pad(n):
    return b"\0" * ((512 - n % 512) % 512)
with open(path, "wb", buffering=1 << 20) as f:
    # The image first (the JSON that names it comes after it, the harder order).
    f.write(header("huge000000.png", size))
    left = size
    while left:
        k = min(left, len(block))
        f.write(block[:k])
        left -= k
    f.write(pad(size))
    meta = json.dumps({"image_name": "huge000000.png", "width": 16384, "height": 16384,
                       "short_caption": "one very large image", "long_caption": "x" * 200}).encode()
    f.write(header("huge000000.json", len(meta)))
    f.write(meta + pad(len(meta)))
    f.write(b"\0" * 1024)
PY
}
make_many() {  # $1 = dir
    log "generating a shard of $SAMPLES samples ($(( SAMPLES * 2 )) members, 64-byte images) into $1"
    "$SP" generate --output "$1" --shards 1 --samples "$SAMPLES" --image-bytes 64 >/dev/null
}

# Polls /proc/PID/status (VmRSS, VmHWM) every 0.1 s into $2 until PID exits.
poll_mem() {  # $1 = pid, $2 = out file
    local t0 s
    t0=$(date +%s%N)
    : >"$2"
    while [[ -r /proc/$1/status ]]; do
        s=$(awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r+0, h+0}' "/proc/$1/status" 2>/dev/null || true)
        [[ -n "$s" ]] && echo "$(( ($(date +%s%N) - t0) / 1000000 )) $s" >>"$2"
        sleep 0.1
    done
}
polled_peak_kb() { awk 'BEGIN{m=0} {if ($3>m) m=$3} END{print m}' "$1"; }
report_field() {  # $1 = report.json, $2 = python expression on r
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo "?"
}

ROWS=()   # markdown rows
NOTES=()
ALL_OK=1
verdict_of() { (( $1 <= $2 * 1048576 )) && echo PASS || echo FAIL; }

# shardprep run --workers 1 under /usr/bin/time: report.json's numbers + the tree's max RSS.
case_run() {  # $1 = case, $2 = input dir, $3 = description
    local out="$WORK_RUNS/$1-run" tf="$WORK_RUNS/$1-run.time"
    log "$1: shardprep run --workers 1"
    set +e
    "$TIME" -f '%M %e %U %S' -o "$tf" "$SP" run --input "$2" --output "$out" --workers 1 --progress never \
        >"$WORK_RUNS/$1-run.stdout" 2>"$WORK_RUNS/$1-run.stderr"
    local rc=$?
    set -e
    local rep="$out/report.json"
    local w c v wall tree
    w=$(report_field "$rep" "r['resources']['worker_peak_rss_bytes']")
    c=$(report_field "$rep" "r['resources']['coordinator_peak_rss_bytes']")
    v=$(report_field "$rep" "r['verdict']")
    read -r tree wall _ _ <"$tf" || true
    # The verdict uses the tree's max RSS: an upper bound of the worker's (report.json's
    # number is sampled at heartbeats and is 0 when the shard ends before the first one).
    # When that max is the `run` process's own (it hosts the coordinator, whose end-of-job
    # check holds every written path), the worker is judged by its own number instead.
    local wv; wv=$(verdict_of $(( ${tree:-0} * 1024 )) $WORKER_TARGET_MIB)
    if [[ "$wv" == FAIL && "$w" =~ ^[1-9][0-9]*$ && "$c" =~ ^[0-9]+$ ]] \
        && (( c + 1048576 >= ${tree:-0} * 1024 )); then
        wv="$(verdict_of "$w" $WORKER_TARGET_MIB) (the worker by report.json; the tree's max is the coordinator's)"
    fi
    [[ "$wv" == PASS* ]] || ALL_OK=0
    local ws="$w"
    if [[ "$w" == 0 ]]; then ws="— (no heartbeat before the end)"; elif [[ "$w" =~ ^[0-9]+$ ]]; then ws="$(mib "$w") (report.json, sampled at heartbeats)"; fi
    ROWS+=("| $1 | $3 | \`run --workers 1\` (exit $rc, verdict $v) | $ws | $( [[ "$c" =~ ^[0-9]+$ ]] && mib "$c" || echo "$c") (report.json) | $(mib $(( ${tree:-0} * 1024 ))) | ${wall:-?} | **$wv** |")
    rm -rf "$out"
}

# coordinator + worker by hand: /usr/bin/time %M of the worker process itself, and a VmHWM timeline.
case_hand() {  # $1 = case, $2 = input dir, $3 = description
    local out="$WORK_RUNS/$1-hand" token
    token=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    log "$1: shardprep coordinator + shardprep worker (by hand)"
    SHARDPREP_TOKEN="$token" "$TIME" -f '%M %e %U %S' -o "$WORK_RUNS/$1-coord.time" \
        "$SP" --log-format json coordinator --input "$2" --output "$out" --listen 127.0.0.1:0 \
        >"$WORK_RUNS/$1-coord.stdout" 2>"$WORK_RUNS/$1-coord.stderr" &
    local ctime_pid=$! addr=""
    for _ in $(seq 1 300); do
        addr=$(grep -o '"addr":"[^"]*"' "$WORK_RUNS/$1-coord.stderr" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        [[ -n "$addr" ]] && break
        sleep 0.1
    done
    [[ -n "$addr" ]] || { log "coordinator did not start"; cat "$WORK_RUNS/$1-coord.stderr" >&2; kill "$ctime_pid"; exit 1; }
    SHARDPREP_TOKEN="$token" SHARDPREP_WORKER_ID="mem-$1" SHARDPREP_CONNECT_TIMEOUT=20s \
        "$TIME" -f '%M %e %U %S' -o "$WORK_RUNS/$1-worker.time" \
        "$SP" worker --coordinator "http://$addr" >/dev/null 2>"$WORK_RUNS/$1-worker.stderr" &
    local wtime_pid=$! wpid=""
    for _ in $(seq 1 100); do
        wpid=$(pgrep -P "$wtime_pid" | head -1 || true)
        [[ -n "$wpid" ]] && break
        sleep 0.02
    done
    local poll_pid=""
    : >"$WORK_RUNS/$1-worker.mem"
    if [[ -n "$wpid" ]]; then
        poll_mem "$wpid" "$WORK_RUNS/$1-worker.mem" &
        poll_pid=$!
    fi
    set +e
    wait "$wtime_pid"; local wrc=$?
    wait "$ctime_pid"; local crc=$?
    [[ -n "$poll_pid" ]] && wait "$poll_pid" 2>/dev/null
    set -e
    local wk ck wall polled v
    read -r wk wall _ _ <"$WORK_RUNS/$1-worker.time" || true
    read -r ck _ _ _ <"$WORK_RUNS/$1-coord.time" || true
    polled=$(polled_peak_kb "$WORK_RUNS/$1-worker.mem" 2>/dev/null || echo 0)
    v=$(report_field "$out/report.json" "r['verdict']")
    local wb=$(( ${wk:-0} * 1024 ))
    local wv; wv=$(verdict_of "$wb" $WORKER_TARGET_MIB)
    [[ "$wv" == PASS ]] || ALL_OK=0
    ROWS+=("| $1 | $3 | \`coordinator\` + \`worker\` (exits $crc/$wrc, verdict $v) | $(mib "$wb") (time %M); $(mib $(( polled * 1024 ))) (VmHWM polled) | $(mib $(( ${ck:-0} * 1024 ))) (time %M) | — | ${wall:-?} | **$wv** |")
    # Where the worker's memory grew: RSS at quarters of its life.
    if [[ -s "$WORK_RUNS/$1-worker.mem" ]]; then
        NOTES+=("- $1, worker RSS over its life (ms → VmRSS/VmHWM MiB): $(awk '{t[NR]=$1; r[NR]=$2; h[NR]=$3} END{n=NR; for (q=1;q<=4;q++){i=int(n*q/4); if(i<1)i=1; printf "%s%d → %.1f/%.1f", (q>1?"; ":""), t[i], r[i]/1024, h[i]/1024}}' "$WORK_RUNS/$1-worker.mem")")
    fi
    rm -rf "$out"
}

for c in $CASES; do
    dir="$WORK/data-$c"
    rm -rf "$dir"
    case "$c" in
        huge) make_huge "$dir"; desc="1 shard, 2 members: one $(( HUGE_BYTES >> 20 )) MiB image + its JSON" ;;
        many) make_many "$dir"; desc="1 shard, $(( SAMPLES * 2 )) members ($SAMPLES samples, 64-byte images)" ;;
        *) log "unknown case $c"; exit 2 ;;
    esac
    size=$(du -b "$dir"/*.tar | awk '{s+=$1} END{printf "%d", s}')
    desc="$desc, $(mib "$size") MiB of tar"
    case_run "$c" "$dir" "$desc"
    case_hand "$c" "$dir" "$desc"
    [[ "${MEM_KEEP:-0}" == 1 ]] || rm -rf "$dir"
done

# 4. The coordinator with 10,000 shards (the scale bench's scheduling scenario).
SCALE_OUT=""
if [[ "${MEM_SCALE:-1}" == 1 ]]; then
    log "cargo bench -p shardprep-coordinator --bench scale (scheduling: 10,000 shards, 64 clients)"
    set +e
    SCALE_OUT=$(cd "$ROOT" && SHARDPREP_BIN="$SP" SCALE_SCENARIOS=scheduling cargo bench -q -p shardprep-coordinator --bench scale 2>&1)
    set -e
    grep -q 'coordinator peak RSS ≤.*PASS' <<<"$SCALE_OUT" || ALL_OK=0
fi

# 5. Results.
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (+ uncommitted changes)" || true)
{
    echo "# shardprep memory results"
    echo
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Made by \`bash bench/memory.sh\`."
    echo
    echo "- cores (nproc): **$(nproc)**; CPU: $(awk -F: '/model name/{gsub(/^ /,"",$2); print $2; exit}' /proc/cpuinfo); memory: $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "- kernel: $(uname -r); work dir filesystem: $(df -T "$WORK" | awk 'NR==2{print $2}')"
    echo "- shardprep: commit $commit$dirty, \`cargo build --release\`"
    echo "- targets: worker peak RSS ≤ ${WORKER_TARGET_MIB} MiB whatever the shard's size or member count; coordinator ≤ ${COORD_TARGET_MIB} MiB with 10,000 shards"
    echo
    echo "## Worker"
    echo
    echo "| case | shard | how | worker peak RSS MiB | coordinator peak RSS MiB | max RSS of the \`run\` tree MiB (time %M) | wall s | worker ≤ ${WORKER_TARGET_MIB} MiB |"
    echo "|---|---|---|---:|---:|---:|---:|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "How each number is taken:"
    echo
    echo "- *report.json*: \`resources.worker_peak_rss_bytes\` (the worker's VmHWM as sent in its heartbeats, so a peak reached after the last heartbeat is missed) and \`resources.coordinator_peak_rss_bytes\` (VmHWM of the \`run\` process, which hosts the coordinator, when the report is written)."
    echo "- *time %M*: \`/usr/bin/time -f %M\` around the process itself: its exact peak RSS (ru_maxrss). For \`run\` it is the largest of the \`run\` process and its worker."
    echo "- *VmHWM polled*: /proc/PID/status of the worker every 0.1 s (a check on time %M)."
    echo "- Verdict: by hand, the worker's own time %M; in \`run\`, the tree's time %M (an upper bound of the worker's peak), unless that is the coordinator's (the \`run\` process hosts it): then report.json's worker number."
    echo "- Wall times are only for orientation: on a shared machine they swing with other load (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))."
    if (( ${#NOTES[@]} )); then
        echo
        printf '%s\n' "${NOTES[@]}"
    fi
    if [[ -n "$SCALE_OUT" ]]; then
        echo
        echo "## Coordinator with 10,000 shards"
        echo
        echo "\`cargo bench -p shardprep-coordinator --bench scale\` (scheduling scenario): the real \`shardprep coordinator\` as a subprocess, 10,000 tiny shards, 64 concurrent in-process gRPC clients doing Register → Lease → write fragment + manifest → Complete."
        echo
        grep -E '^\|' <<<"$SCALE_OUT" || true
        echo
        grep -E '^(TARGET|CHECK|coordinator exit|RPCs)' <<<"$SCALE_OUT" | sed 's/^/- /' || true
    fi
    echo
    echo "Overall: **$( (( ALL_OK )) && echo PASS || echo FAIL)**"
} >"$RESULTS"
log "wrote $RESULTS"
cat "$RESULTS"
