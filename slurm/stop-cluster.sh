#!/usr/bin/env bash
# Stop the cluster slurm/start-cluster.sh started in SHARDPREP_SLURM_DIR (default
# /tmp/shardprep-slurm): cancel its jobs, stop slurmctld and every slurmd, then munged.
# Signals only the processes named in that folder's pid files.
# SHARDPREP_SLURM_PURGE=1 also removes the folder.
set -uo pipefail

DIR=${SHARDPREP_SLURM_DIR:-/tmp/shardprep-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf
say() { echo "stop-cluster: $*" >&2; }

pid_of() { [ -s "$1" ] && cat "$1"; }
running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

daemons=()
for f in "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd-*.pid; do
    p=$(pid_of "$f") || continue
    running "$p" && daemons+=("$p")
done

if [ ${#daemons[@]} -gt 0 ] && [ -f "$SLURM_CONF" ]; then
    # Jobs first (their steps get SIGTERM, then SIGKILL after KillWait), then the daemons.
    timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
    timeout 10 scontrol shutdown >/dev/null 2>&1 || true
fi

# Wait for a clean exit (up to 10 s), then TERM, then KILL what is left.
gone() {
    local _ p
    for _ in $(seq 1 "$1"); do
        left=()
        for p in "${daemons[@]}"; do running "$p" && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.2
    done
    return 1
}
left=()
if ! gone 50; then
    say "still running after shutdown: ${left[*]}: SIGTERM"
    kill -TERM "${left[@]}" 2>/dev/null || true
    gone 15 || { say "SIGKILL ${left[*]}"; kill -KILL "${left[@]}" 2>/dev/null || true; }
fi

m=$(pid_of "$DIR/run/munged.pid") || m=
if running "$m"; then
    kill "$m" 2>/dev/null || true
    for _ in $(seq 1 25); do running "$m" || break; sleep 0.2; done
fi

rm -f "$DIR"/run/*.pid
[ "${SHARDPREP_SLURM_PURGE:-0}" = 1 ] && rm -rf "$DIR"
say "stopped ($DIR)"
