#!/usr/bin/env bash
# Remote-read row: `shardprep run` on shards served by a local HTTP server (loopback only)
# against the same shards read from a local folder; throughput ratio remote/local.
# Writes bench/REMOTE.md. Everything it makes lives in bench/work/remote/ (gitignored).
#
#   bash bench/remote.sh
#
# Knobs (env vars):
#   REMOTE_REPS=3           alternating repetitions (local, remote, local, remote, ...)
#   REMOTE_WORKERS=2        --workers for both rows
#   REMOTE_SHARDS=4 REMOTE_SAMPLES=2000 REMOTE_IMAGE_BYTES=65536   the data (~0.5 GB);
#                           samples are halved until the data + two outputs fit on the disk
#   REMOTE_IDLE_WAIT=10     max seconds to wait for a quiet machine (< 0.5 core busy) before a run
#   REMOTE_NO_BUILD=1       skip `cargo build --release`
#   REMOTE_RESULTS=FILE     where to write the markdown (default bench/REMOTE.md)
#
# What is timed (wall clock, bash $EPOCHREALTIME around the command, /usr/bin/time for CPU):
#   local : sp run --input W/shards --output OUT --workers N --progress never
#   remote: sp run --input 'http://127.0.0.1:PORT/data-{000000..000003}.tar' --output OUT ...
# Order ABBA: local remote, remote local, local remote. Each output is removed right after its
# run (rep 1's pair after the comparison). Before each run, outside the timed region: `sync`, then
# up to REMOTE_IDLE_WAIT s waiting for a quiet machine. The shards are read once
# before the first run so both rows (and the server) read them from the page cache.
# The server is bench/remote_server.py (HEAD, GET, Range, ETag, Last-Modified; sendfile).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
W="$BENCH_DIR/work/remote"
REPS="${REMOTE_REPS:-3}"
WORKERS="${REMOTE_WORKERS:-2}"
SHARDS="${REMOTE_SHARDS:-4}"
SAMPLES="${REMOTE_SAMPLES:-2000}"
IMAGE_BYTES="${REMOTE_IMAGE_BYTES:-65536}"
SEED=42
RESULTS="${REMOTE_RESULTS:-$BENCH_DIR/REMOTE.md}"

log() { printf '[remote] %s\n' "$*" >&2; }
mkdir -p "$W"

# Loopback only: no proxy may see these requests.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# 1. Build (shared target dir; never cleaned) and a private copy of the binary.
if [[ "${REMOTE_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
fi
cp -f "$ROOT/target/release/shardprep" "$W/sp"
SP="$W/sp"
dirty=""; [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] && dirty=" + uncommitted changes"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty"

# 2. Data, deterministic; sized to the free disk (shards + 2 outputs + 1 GB slack).
avail=$(( $(df -Pk "$W" | awk 'NR==2 {print $4}') * 1024 ))
per_sample=$(( IMAGE_BYTES + 2048 ))   # image + JSON + tar headers, roughly
while (( SAMPLES >= 100 )); do
    need=$(( SHARDS * SAMPLES * per_sample * 3 + 1000000000 ))
    (( need <= avail )) && break
    log "not enough disk for $SAMPLES samples/shard ($(( need / 1000000 )) MB needed, $(( avail / 1000000 )) MB free): halving"
    SAMPLES=$(( SAMPLES / 2 ))
done
(( SAMPLES >= 100 )) || { log "not enough disk space"; exit 1; }
stamp="shards=$SHARDS samples=$SAMPLES image_bytes=$IMAGE_BYTES seed=$SEED"
if [[ ! -f "$W/stamp" || "$(cat "$W/stamp")" != "$stamp" ]]; then
    log "generating $stamp"
    rm -rf "$W/shards" "$W/stamp"
    "$SP" generate --output "$W/shards" --shards "$SHARDS" --samples "$SAMPLES" \
        --image-bytes "$IMAGE_BYTES" --seed "$SEED" >/dev/null
    echo "$stamp" > "$W/stamp"
fi
SHARD_BYTES=$(stat -c %s "$W"/shards/*.tar | awk '{s += $1} END {print s}')
last=$(printf '%06d' $(( SHARDS - 1 )))

# 3. The server, killed on any exit.
rm -f "$W/port"
python3 "$BENCH_DIR/remote_server.py" "$W/shards" --port-file "$W/port" \
    >/dev/null 2>"$W/server.log" &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do [[ -s "$W/port" ]] && break; sleep 0.1; done
[[ -s "$W/port" ]] || { log "server did not start"; cat "$W/server.log" >&2; exit 1; }
PORT="$(cat "$W/port")"
URL="http://127.0.0.1:$PORT/data-{000000..$last}.tar"
log "server pid $SERVER_PID on 127.0.0.1:$PORT; data: $stamp ($(( SHARD_BYTES / 1000000 )) MB)"

# 4. Warm the page cache, then alternate the runs.
cat "$W"/shards/*.tar > /dev/null
rm -rf "$W/out" "$W/logs" "$W/parquet"
mkdir -p "$W/out" "$W/logs" "$W/parquet"
TSV="$W/runs.tsv"
printf 'row\trep\twall_s\tuser_s\tsys_s\trc\tresuming\trequests\tserver_cpu_s\tothers_cpu_s\tload1\tverdict\n' > "$TSV"
CLK=$(getconf CLK_TCK)
proc_busy() { awk 'NR==1 {print $2+$3+$4+$7+$8+$9}' /proc/stat; }   # machine busy ticks
server_ticks() { awk '{print $14+$15}' "/proc/$SERVER_PID/stat"; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"

IDLE_WAIT="${REMOTE_IDLE_WAIT:-10}"
wait_quiet() {  # up to IDLE_WAIT s until the machine used < 0.5 core over the last second
    local t=0 a b
    while (( t < IDLE_WAIT )); do
        a=$(proc_busy); sleep 1; b=$(proc_busy); t=$((t + 1))
        (( (b - a) * 2 < CLK )) && return 0
    done
    return 0
}
run_one() {  # row rep
    local row=$1 rep=$2 out="$W/out/$1-$2" input
    [[ $row == local ]] && input="$W/shards" || input="$URL"
    rm -rf "$out"; sync
    wait_quiet
    local load1 req0 srv0 busy0 t0 t1 rc=0
    load1=$(cut -d' ' -f1 /proc/loadavg)
    req0=$(wc -l < "$W/server.log"); srv0=$(server_ticks); busy0=$(proc_busy)
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%U %S' -o "$W/logs/$row-$rep.time" \
        "$SP" run --input "$input" --output "$out" --workers "$WORKERS" --progress never \
        > "$W/logs/$row-$rep.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    local busy1 srv1 req1 user sys wall resuming srv_s others
    busy1=$(proc_busy); srv1=$(server_ticks); req1=$(wc -l < "$W/server.log")
    read -r user sys < <(tail -n1 "$W/logs/$row-$rep.time")
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    resuming=$(grep -c 'resuming' "$W/logs/$row-$rep.log" || true)
    srv_s=$(awk -v a="$srv0" -v b="$srv1" -v c="$CLK" 'BEGIN {printf "%.2f", (b - a) / c}')
    [[ $row == local ]] && srv_s=0
    others=$(awk -v a="$busy0" -v b="$busy1" -v c="$CLK" -v u="$user" -v s="$sys" -v v="$srv_s" \
        'BEGIN {o = (b - a) / c - u - s - v; if (o < 0) o = 0; printf "%.2f", o}')
    local verdict
    verdict=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("verdict"))' \
        "$out/report.json" 2>/dev/null || echo none)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$rep" "$wall" "$user" "$sys" \
        "$rc" "$resuming" "$((req1 - req0))" "$srv_s" "$others" "$load1" "$verdict" >> "$TSV"
    log "$row rep $rep: ${wall}s (rc $rc, verdict $verdict, user ${user}s sys ${sys}s, server ${srv_s}s, others ${others}s, resuming $resuming, requests $((req1 - req0)))"
    [[ -f "$out/dalle3.parquet" ]] && cp "$out/dalle3.parquet" "$W/parquet/$row-$rep.parquet"
    [[ -f "$out/report.json" ]] && cp "$out/report.json" "$W/logs/$row-$rep.report.json"
    return 0
}

CHECKS=()
ORDER=()
for rep in $(seq "$REPS"); do
    # ABBA order (local remote, remote local, ...): neither row always goes first.
    if (( rep % 2 == 1 )); then rows=(local remote); else rows=(remote local); fi
    ORDER+=("${rows[*]}")
    for row in "${rows[@]}"; do
        run_one "$row" "$rep"
        # Every output is deleted right after its run (outside the timed region), so every
        # run but the first starts after the same "rm -rf an output; sync". Rep 1's pair is
        # kept until both exist, for the one full comparison.
        if [[ $rep != 1 ]]; then rm -rf "$W/out/$row-$rep"; fi
    done
    if [[ $rep == 1 ]]; then   # the one full comparison, untimed
        if diff -r -q "$W/out/local-1/data" "$W/out/remote-1/data" > "$W/logs/diff-data.txt" 2>&1; then
            CHECKS+=("\`diff -r\` of data/ (rep 1, local vs remote): identical ($(find "$W/out/local-1/data" -type f | wc -l) files)")
        else
            CHECKS+=("**\`diff -r\` of data/ (rep 1) differs**: $(wc -l < "$W/logs/diff-data.txt") lines in bench/work/remote/logs/diff-data.txt")
        fi
        rm -rf "$W/out"/*
    fi
done
sync
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
ref="$W/parquet/local-1.parquet"
same=0; total=0; bad=()
for p in "$W"/parquet/*.parquet; do
    total=$((total + 1))
    if cmp -s "$ref" "$p"; then same=$((same + 1)); else bad+=("$(basename "$p")"); fi
done
if (( ${#bad[@]} == 0 )); then
    CHECKS+=("\`cmp\` of dalle3.parquet: all $total runs byte-identical to local rep 1")
else
    CHECKS+=("**\`cmp\` of dalle3.parquet: ${bad[*]} differ from local rep 1** ($same/$total identical)")
fi

# 5. Table (median of the repetitions) -> stdout and $RESULTS.
python3 - "$TSV" "$RESULTS" "$SHARD_BYTES" <<PY
import json, statistics, sys, glob, os
tsv, results, shard_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(tsv)][1:]
def col(row, i, ok_only=True):
    return [float(r[i]) for r in rows if r[0] == row and (not ok_only or (r[5] == "0" and r[11] == "ok"))]
def med(xs): return statistics.median(xs) if xs else float("nan")
# per-shard input MB/s from report.json (median over runs and shards)
def shard_rates(row):
    xs = []
    for f in glob.glob(os.path.join("$W/logs", f"{row}-*.report.json")):
        xs += [s.get("input_mb_per_s") or 0 for s in json.load(open(f)).get("shards", [])]
    return xs
stats = {}
for row in ("local", "remote"):
    walls = col(row, 2)
    n_all = sum(1 for r in rows if r[0] == row)
    stats[row] = dict(
        n=len(walls), failed=n_all - len(walls), med=med(walls),
        lo=min(walls) if walls else float("nan"), hi=max(walls) if walls else float("nan"),
        user=med(col(row, 3)), sys=med(col(row, 4)), server=med(col(row, 8)),
        others=med(col(row, 9)), resuming=int(sum(col(row, 6, False))),
        requests=med(col(row, 7, False)), shard_rate=med(shard_rates(row)))
    stats[row]["mbs"] = shard_bytes / 1e6 / stats[row]["med"]
L, R = stats["local"], stats["remote"]
out = []
out.append("| row | runs ok | median s | min–max s | MB/s | × local (wall) | CPU s user+sys | server CPU s | others' CPU s | per-shard input MB/s | resuming lines | HTTP requests/run |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, s in (("local folder", L), ("remote (HTTP, loopback)", R)):
    label = name + (f" ({s['failed']} failed)" if s["failed"] else "")
    row = "local" if s is L else "remote"
    out.append(f"| {label} | {s['n']} | {s['med']:.2f} | {s['lo']:.2f}–{s['hi']:.2f} | {s['mbs']:.1f} | "
               f"{s['med'] / L['med']:.2f} | {s['user']:.2f}+{s['sys']:.2f} | "
               f"{'—' if row == 'local' else format(s['server'], '.2f')} | {s['others']:.2f} | "
               f"{s['shard_rate']:.1f} | {s['resuming']} | {'—' if row == 'local' else format(s['requests'], '.0f')} |")
ratio = R["mbs"] / L["mbs"]
table = "\n".join(out)
print(table)
print(f"\nthroughput ratio remote/local = {ratio:.2f} (remote MB/s / local MB/s; wall remote/local = {R['med'] / L['med']:.2f})")
json.dump({"local": L, "remote": R, "ratio_remote_over_local": ratio},
          open("$W/results.json", "w"), indent=1)
with open(results + ".table", "w") as f:
    f.write(table + "\n")
with open(results + ".ratio", "w") as f:
    f.write(f"{ratio:.2f} {R['med'] / L['med']:.2f}\n")
PY
read -r RATIO WALL_RATIO < "$RESULTS.ratio"
TABLE="$(cat "$RESULTS.table")"
rm -f "$RESULTS.ratio" "$RESULTS.table"
RUNS="$(column -t -s $'\t' "$TSV" 2>/dev/null || cat "$TSV")"
REQ_SAMPLE="$(grep -m8 . "$W/server.log")"

cat > "$RESULTS" <<MD
# Remote read vs local folder

\`bash bench/remote.sh\` — $START_DATE, shardprep commit $COMMIT, $(nproc) cores
($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')).

**Throughput ratio remote/local: $RATIO** (remote wall / local wall = $WALL_RATIO).

The same $SHARDS shards ($stamp, $(awk -v b="$SHARD_BYTES" 'BEGIN {printf "%.1f", b / 1e6}') MB), \`--workers $WORKERS --progress never\`,
$REPS alternating repetitions in ABBA order ($(IFS=,; echo "${ORDER[*]}" | sed 's/,/ | /g')); each row's median.

- **local**: \`sp run --input bench/work/remote/shards --output OUT --workers $WORKERS --progress never\`
- **remote**: \`sp run --input 'http://127.0.0.1:PORT/data-{000000..$last}.tar' --output OUT --workers $WORKERS --progress never\`,
  served by \`bench/remote_server.py\` (Python \`ThreadingHTTPServer\`, HTTP/1.1 keep-alive, HEAD/GET,
  \`Range: bytes=N-\` → 206 + Content-Range, ETag = size-mtime, Last-Modified, bodies with sendfile)
  on 127.0.0.1 of the same machine: loopback only, no network, no proxy.

$TABLE

Columns: **median s** wall clock of the whole \`sp run\` (coordinator + workers, merge and
verification included); **MB/s** shard bytes (10⁶) / median s; **× local** median / local median;
**CPU s** user+sys of sp's process tree (\`/usr/bin/time\`), medians; **server CPU s** the Python
server's CPU during the run; **others' CPU s** busy CPU of the whole machine (\`/proc/stat\`) minus
sp's and the server's: mostly other jobs, but kernel threads flushing
sp's own dirty pages count here too; **per-shard input MB/s** \`input_mb_per_s\` of
each shard in report.json (one worker's read rate; median over runs × shards); **resuming lines**
"remote read interrupted; resuming with a range request" in the logs, all runs; **HTTP
requests/run** lines in the server log (HEADs for the listing + GETs, incl. range GETs).

Outside the timed region: each output is removed (\`rm -rf\`) right after its run (rep 1's pair
after the comparison below), so every run but the first starts after the same "remove an output,
\`sync\`"; before each run \`sync\` and a wait of at most ${IDLE_WAIT} s for the machine to use
less than half a core. The shards were read once before the first run, so both rows — and the
server — read them from the page cache.

## Checks

$(for c in "${CHECKS[@]}"; do echo "- $c"; done)
- exit code and report.json verdict of every run: the rc and verdict columns below (a run with rc ≠ 0 or verdict ≠ ok is left out of the medians and counted as failed).

## Machine: shared and noisy

A $(nproc)-core VM shared with other jobs while this ran (another benchmark and builds).
Load average (1, 5, 15 min) before the first run: **$LOAD_BEFORE**; after the last: **$LOAD_AFTER**.
The "others' CPU s" column and the per-run load below show how much of the machine was not ours;
read the ratio as indicative, not precise.

## Every run

\`\`\`text
$RUNS
\`\`\`

First requests in the server log (method, path, range, status, bytes, seconds):

\`\`\`text
$REQ_SAMPLE
\`\`\`
MD
log "wrote $RESULTS"
echo
echo "throughput ratio remote/local: $RATIO   (load before: $LOAD_BEFORE; after: $LOAD_AFTER)"
