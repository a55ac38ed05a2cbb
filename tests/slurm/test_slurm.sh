#!/usr/bin/env bash
# End-to-end test of slurm/shardprep.sbatch on a real Slurm cluster (slurmctld, three
# slurmd, munged) started on this machine by slurm/start-cluster.sh. Needs root, and
# apt access the first time (slurm-wlm, munge).
#
#   cargo build --release && bash tests/slurm/test_slurm.sh
#
# Every job is the real script submitted with `sbatch --wait`, and every output is
# compared with an oracle made by `shardprep run` on the same shards (parquet
# byte-identical, data/ trees identical, `shardprep verify` passes):
#   1. a job over 3 nodes runs to a verified output; the token stays private
#   2. the job's exit code is the coordinator's: 1 when the output does not verify,
#      2 for flags the script refuses
#   3. scancel mid-way stops every process of the job; the same command resubmitted resumes
#   4. a worker task killed with SIGKILL while it holds a shard: the job still verifies
#   5. every worker killed: the script starts the worker step again and the job verifies
#
# Settings: SHARDPREP_BIN (default target/release/shardprep), SHARDPREP_SLURM_DIR
# (the cluster's folder; a cluster already up there is reused and left up),
# KEEP=1 keeps the work folder. Prints "N passed, M failed" and exits 1 on a failure.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export SHARDPREP_BIN=${SHARDPREP_BIN:-$ROOT/target/release/shardprep}
BIN=$SHARDPREP_BIN
SBATCH=$ROOT/slurm/shardprep.sbatch
SHARDS=8
SAMPLES=200
EXPECT=$((SHARDS * SAMPLES))
PASSED=0
FAILED=0
T0=$SECONDS

say() { echo "# $*"; }
pass() { PASSED=$((PASSED + 1)); echo "ok   $1"; }
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL $1"
    [ -z "${2:-}" ] || while IFS= read -r l; do echo "     | $l"; done <<<"$2"
}
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

[ "$(id -u)" -eq 0 ] || { echo "needs root (slurmd runs jobs as their users)"; exit 2; }
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release, or set SHARDPREP_BIN"; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardprep-slurm-test.XXXXXX")
chmod 0755 "$WORK"

# The cluster: reuse one that is up, else start one and stop it at the end.
export SHARDPREP_SLURM_DIR=${SHARDPREP_SLURM_DIR:-/tmp/shardprep-slurm}
export SLURM_CONF=$SHARDPREP_SLURM_DIR/etc/slurm.conf
OWN_CLUSTER=1
if [ -f "$SLURM_CONF" ] && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then OWN_CLUSTER=0; fi

finish() {
    timeout 10 scancel --user="$(id -un)" --name=shardprep-test 2>/dev/null
    [ "$OWN_CLUSTER" = 1 ] && timeout 60 "$ROOT/slurm/stop-cluster.sh" >/dev/null 2>&1
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    say "cleaned up; $((SECONDS - T0)) s in all"
}
trap finish EXIT

# Submits the script with `sbatch --wait` (bounded); prints the job id, returns the job's exit code.
job() {
    local name=$1
    shift
    timeout 300 sbatch --wait --parsable --job-name=shardprep-test --comment="$name" \
        --output="$WORK/$name.out" "$@"
}

# Runs "$@" until it succeeds or $1 seconds pass.
wait_until() {
    local limit=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $limit ] || return 1
        sleep 0.1
    done
}

# Waits (at most $2 s) for background process $1, prints nothing, returns its exit code.
wait_bg() {
    local limit=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        [ $SECONDS -lt $limit ] || { kill -TERM "$1"; break; }
        sleep 0.2
    done
    wait "$1"
}

# `shardprep status --json` of the job writing $1, with the address and token the job left there.
status() {
    local priv=$1/.shardprep/slurm
    [ -s "$priv/coordinator" ] && [ -s "$priv/token" ] || return 1
    timeout 20 "$BIN" status --coordinator "$(cat "$priv/coordinator")" --token-file "$priv/token" --json 2>/dev/null
}

# Python one-liner on a JSON document read from stdin (`d` is the document).
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }

same_as_oracle() {
    cmp "$WORK/oracle/dalle3.parquet" "$1/dalle3.parquet" && diff -r "$WORK/oracle/data" "$1/data" >/dev/null
}
verified() { "$BIN" verify "$1" --expect-json "$EXPECT" >/dev/null 2>&1; }
exit_code_in_slurm() { timeout 10 scontrol show job "$1" | grep -q "ExitCode=$2:0"; }
job_state() { timeout 10 scontrol show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
report() { jq_py "$2" <"$1/report.json"; }

# "pid command line" of every process (one python3, not a fork per process).
process_table() {
    python3 -c '
import os
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            c = open("/proc/%s/cmdline" % p, "rb").read()
        except OSError:
            continue
        print(p, c.replace(b"\0", b" ").decode(errors="replace"))'
}

# Processes of the job whose coordinator is at $1 (its URL's port in their command line).
# The table is taken before grep starts, or grep would find its own command line.
job_processes() {
    local t
    t=$(process_table)
    grep -F -e "--listen 0.0.0.0:${1##*:} " -e "--coordinator $1 " <<<"$t" | cut -d' ' -f1
}

say "cluster"
CLUSTER_LOG=$(SHARDPREP_SLURM_DIR=$SHARDPREP_SLURM_DIR "$ROOT/slurm/start-cluster.sh" 2>&1 >/dev/null) \
    || { echo "$CLUSTER_LOG"; echo "0 passed, 1 failed (cluster did not start)"; exit 1; }
say "$CLUSTER_LOG ($((SECONDS - T0)) s)"

say "shards and oracle ($SHARDS shards x $SAMPLES samples)"
"$BIN" generate --output "$WORK/shards" --shards "$SHARDS" --samples "$SAMPLES" --image-bytes 16384 >/dev/null \
    || { echo "0 passed, 1 failed (generate)"; exit 1; }
"$BIN" run --input "$WORK/shards" --output "$WORK/oracle" --workers 2 --expect-json "$EXPECT" --progress never \
    >/dev/null 2>&1 || { echo "0 passed, 1 failed (oracle run)"; exit 1; }

# --- 1. a verified job over three nodes ----------------------------------------------
say "1. job over 3 nodes ($((SECONDS - T0)) s)"
OUT1=$WORK/out1
ID=$(job ok --nodes 3 --ntasks-per-node 1 "$SBATCH" --input "$WORK/shards" --output "$OUT1" --expect-json "$EXPECT")
RC=$?
if [ $RC -eq 0 ]; then pass "job exits 0 (sbatch --wait)"; else fail "job exits 0 (sbatch --wait), got $RC" "$(tail -n 20 "$WORK/ok.out")"; fi
check "slurm records ExitCode=0:0" exit_code_in_slurm "$ID" 0
check "shardprep verify passes" verified "$OUT1"
check "parquet byte-identical to the oracle, data/ identical" same_as_oracle "$OUT1"
check "report: ok, all shards done by the job's workers" \
    report "$OUT1" "assert d['verdict'] == 'ok' and d['shards_done'] == $SHARDS and d['shards_recovered'] == 0"
check "the job's token and address are gone after it" test ! -e "$OUT1/.shardprep/slurm/token" -a ! -e "$OUT1/.shardprep/slurm/coordinator"
check "workers started as one step of 3 tasks" grep -q "3 workers on n\[1-3\]" "$WORK/ok.out"

# --- 2. exit codes are the coordinator's ---------------------------------------------
say "2. exit codes ($((SECONDS - T0)) s)"
ID=$(job notverified --ntasks 2 "$SBATCH" --input "$WORK/shards" --output "$OUT1" --expect-json $((EXPECT + 1)))
RC=$?
if [ $RC -eq 1 ]; then pass "a count mismatch: job exits 1"; else fail "a count mismatch: job exits 1, got $RC" "$(tail -n 20 "$WORK/notverified.out")"; fi
check "slurm records ExitCode=1:0" exit_code_in_slurm "$ID" 1
check "the finished job resubmitted redoes nothing" \
    report "$OUT1" "assert d['verdict'] == 'failed' and d['shards_recovered'] == $SHARDS"
job badflags "$SBATCH" --input "$WORK/shards" --output "$WORK/out-bad" --listen 0.0.0.0:1 >/dev/null
RC=$?
if [ $RC -eq 2 ] && grep -q "is set by this script" "$WORK/badflags.out"; then pass "--listen in the job flags: job exits 2"
else fail "--listen in the job flags: job exits 2, got $RC" "$(cat "$WORK/badflags.out")"; fi

# --- 3. scancel mid-way, then resubmit --------------------------------------------
say "3. scancel and resume ($((SECONDS - T0)) s)"
OUT2=$WORK/out2
# One shard never finishes (worker test hook): the job is mid-way until it is cancelled.
SHARDPREP_FAULT=hang:data-000005.tar job cancel --ntasks 3 "$SBATCH" --input "$WORK/shards" --output "$OUT2" \
    --expect-json "$EXPECT" >/dev/null &
BG=$!
half_done() { kill -0 "$BG" 2>/dev/null || return 0; status "$OUT2" | jq_py "assert d['phase'] == 'running' and d['shards_done'] >= $SHARDS // 2" 2>/dev/null; }
if wait_until 120 half_done && kill -0 "$BG" 2>/dev/null; then pass "job running, half of the shards done"; else fail "job running, half of the shards done" "$(tail -n 20 "$WORK/cancel.out")"; fi
ID=$(timeout 10 squeue -h --name=shardprep-test -o '%i %k' | awk '$2 == "cancel" {print $1}')
URL=$(cat "$OUT2/.shardprep/slurm/coordinator" 2>/dev/null)
TOKEN=$(cat "$OUT2/.shardprep/slurm/token" 2>/dev/null)
check "private folder 0700, token 0600" \
    test "$(stat -c %a "$OUT2/.shardprep/slurm")" = 700 -a "$(stat -c %a "$OUT2/.shardprep/slurm/token")" = 600
# The token is given to grep through a file descriptor, not as an argument.
token_on_no_command_line() {
    local t
    t=$(process_table)
    [ -n "$TOKEN" ] && ! grep -qFf <(printf '%s\n' "$TOKEN") <<<"$t"
}
check "the token is on no process's command line" token_on_no_command_line
check "coordinator and 3 workers running" test "$(job_processes "$URL" | wc -l)" -ge 4
timeout 10 scancel "$ID"
wait_bg $BG 60
RC=$?
# sbatch --wait may return while the job is still COMPLETING (its script cleaning up), with
# an exit code that depends on that moment: wait for the job's end, check its state.
cancelled() { [ "$(job_state "$ID")" = CANCELLED ]; }
if wait_until 60 cancelled; then pass "scancel: job CANCELLED (sbatch --wait returned $RC)"
else fail "scancel: job CANCELLED, state $(job_state "$ID")"; fi
no_job_processes() { [ -z "$(job_processes "$URL")" ]; }
check "no process of the job left" wait_until 30 no_job_processes
stopped_cleanly() { grep -q "SIGTERM (scancel" "$WORK/cancel.out" && test ! -e "$OUT2/.shardprep/slurm/token"; }
check "the script stopped cleanly (SIGTERM handled, token removed)" stopped_cleanly
ID=$(job resume --ntasks 3 "$SBATCH" --input "$WORK/shards" --output "$OUT2" --expect-json "$EXPECT")
RC=$?
if [ $RC -eq 0 ]; then pass "resubmitted job exits 0"; else fail "resubmitted job exits 0, got $RC" "$(tail -n 20 "$WORK/resume.out")"; fi
check "it resumed: the shards done before the cancel were not redone" \
    report "$OUT2" "assert d['verdict'] == 'ok' and d['shards_recovered'] >= $SHARDS // 2"
check "resumed output verifies" verified "$OUT2"
check "resumed output identical to the oracle" same_as_oracle "$OUT2"

# --- 4. a worker killed while it holds a shard --------------------------------------------
say "4. kill -9 a worker ($((SECONDS - T0)) s)"
OUT3=$WORK/out3
# Shards take a fraction of a second here: the worker that leases shard 3 holds it 3 s
# (test hook, inherited by every task) so that the job is still running when it is caught.
SHARDPREP_FAULT=stall:data-000003.tar:3s \
    job kill --ntasks 3 --cpus-per-task 2 "$SBATCH" --input "$WORK/shards" --output "$OUT3" \
    --expect-json "$EXPECT" --lease-timeout 4s >/dev/null &
BG=$!
# The job's worker processes: the binary itself, not the srun that started it.
worker_pids() {
    local url
    url=$(cat "$1/.shardprep/slurm/coordinator" 2>/dev/null) || return 0
    process_table | awk -v c="$BIN worker --coordinator $url " 'substr($0, length($1) + 2) == c { print $1 }'
}
# Shards take a fraction of a second here, so: freeze every worker (SIGSTOP), look for one
# holding a shard, let the others go on (SIGCONT) and kill that one with SIGKILL while it
# still holds the shard; its shard must be re-leased to another worker.
VICTIM='' VSHARD='' VPID=''
freeze_a_worker() {
    local pids hit
    kill -0 "$BG" 2>/dev/null || return 0 # the job ended: nothing to catch
    pids=$(worker_pids "$OUT3" | xargs)
    [ "$(wc -w <<<"$pids")" -ge 3 ] || return 1
    # shellcheck disable=SC2086 # a list of pids
    kill -STOP $pids
    # Every thread stopped (a sandboxed kernel may take a moment), then in-flight calls land.
    # shellcheck disable=SC2086
    timeout 5 python3 -c '
import glob, sys, time
def stopped(p):
    try:
        return all(open(t).read().rsplit(")", 1)[1].split()[0] in "tT" for t in glob.glob("/proc/%s/task/*/stat" % p))
    except OSError:
        return False
while not all(stopped(p) for p in sys.argv[1:]):
    time.sleep(0.02)' $pids || { kill -CONT $pids 2>/dev/null; return 1; }
    sleep 0.3
    hit=$(status "$OUT3" | jq_py "
pids = set('$pids'.split())
l = [s for s in d['shards'] if s['state'] == 'leased' and s['worker'].rsplit('-', 2)[-2] in pids]
print(l[0]['worker'], l[0]['name'], l[0]['worker'].rsplit('-', 2)[-2]) if l else exit(1)" 2>/dev/null)
    if [ -n "$hit" ]; then
        read -r VICTIM VSHARD VPID <<<"$hit"
        kill -KILL "$VPID"
    fi
    # shellcheck disable=SC2086
    kill -CONT $pids 2>/dev/null
    [ -n "$hit" ]
}
if wait_until 120 freeze_a_worker && [ -n "$VPID" ]; then pass "worker $VICTIM (pid $VPID) killed while it held $VSHARD"
else fail "a worker killed while it held a shard" "$(tail -n 20 "$WORK/kill.out")"; fi
wait_bg $BG 300
RC=$?
if [ $RC -eq 0 ]; then pass "job exits 0 after the kill"; else fail "job exits 0 after the kill, got $RC" "$(tail -n 20 "$WORK/kill.out")"; fi
check "killed worker's shard was re-leased and done by another worker" \
    report "$OUT3" "s=[s for s in d['shards'] if s['name']=='$VSHARD'][0]; assert s['state']=='done' and s['attempts']>=2 and s['worker']!='$VICTIM', s"
check "output verifies after the kill" verified "$OUT3"
check "output identical to the oracle after the kill" same_as_oracle "$OUT3"

# --- 5. the whole worker step dies ------------------------------------------------------
say "5. every worker killed ($((SECONDS - T0)) s)"
OUT4=$WORK/out4
SHARDPREP_FAULT=stall:data-000003.tar:3s \
    job relaunch --ntasks 2 "$SBATCH" --input "$WORK/shards" --output "$OUT4" \
    --expect-json "$EXPECT" --lease-timeout 4s >/dev/null &
BG=$!
KILLED=''
kill_all_workers() {
    kill -0 "$BG" 2>/dev/null || return 0
    KILLED=$(worker_pids "$OUT4" | xargs)
    [ "$(wc -w <<<"$KILLED")" -ge 2 ] || return 1
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $KILLED
}
if wait_until 120 kill_all_workers && [ -n "$KILLED" ]; then pass "both workers killed (pids $KILLED)"
else fail "both workers killed" "$(tail -n 20 "$WORK/relaunch.out")"; fi
wait_bg $BG 300
RC=$?
if [ $RC -eq 0 ]; then pass "job exits 0 with a new worker step"; else fail "job exits 0 with a new worker step, got $RC" "$(tail -n 20 "$WORK/relaunch.out")"; fi
check "the script started the worker step again" grep -q "starting it again" "$WORK/relaunch.out"
check "output verifies after the relaunch" verified "$OUT4"
check "output identical to the oracle after the relaunch" same_as_oracle "$OUT4"

# --- 6. index mode with every trainer's index, the formats given by environment ---------
say "6. --mode index --index-format by SHARDPREP_* ($((SECONDS - T0)) s)"
OUT5=$WORK/out5
SHARDPREP_MODE=index SHARDPREP_INDEX_FORMAT=webshart,energon,dali,wids \
    job formats --nodes 2 --ntasks-per-node 1 "$SBATCH" --input "$WORK/shards" --output "$OUT5" >/dev/null
RC=$?
if [ $RC -eq 0 ]; then pass "index job exits 0"; else fail "index job exits 0, got $RC" "$(tail -n 20 "$WORK/formats.out")"; fi
check "report: index mode with the four formats, every shard in each" \
    report "$OUT5" "f=d['index_formats']; assert d['verdict']=='ok' and d['mode']=='index' and f['formats']=='webshart,energon,dali,wids' and f['not_indexed']==[] and f['summary']['formats']['dali']['shards']==$SHARDS, f"
check "energon, DALI and wids files under OUT" test -s "$OUT5/energon/.nv-meta/index.sqlite" -a -s "$OUT5/dali/dali.json" -a -s "$OUT5/wids/wids.json"
check "index output verifies (every format checked against the tars)" "$BIN" verify "$OUT5"
check "the same samples as the extract oracle's parquet" \
    "${SHARDPREP_PYTHON:-python3}" -c "import pyarrow.parquet as pq,sys; a=pq.read_table('$WORK/oracle/dalle3.parquet').column('filename').to_pylist(); b=pq.read_table('$OUT5/dalle3.parquet').column('filename').to_pylist(); sys.exit(sorted(a)!=sorted(b))"

echo "$PASSED passed, $FAILED failed ($((SECONDS - T0)) s)"
[ "$FAILED" -eq 0 ]
