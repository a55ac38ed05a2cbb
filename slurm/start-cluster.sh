#!/usr/bin/env bash
# Start a real single-machine Slurm cluster (Debian 12: slurm-wlm 22.05 + munge) for
# shardprep's tests and for trying slurm/shardprep.sbatch without a cluster.
#
# One slurmctld and SHARDPREP_SLURM_NODES slurmd daemons ("nodes" n1..nN, all on
# 127.0.0.1: this build allows several slurmd on one host), one munged, all started
# by hand (no systemd here) and all living under one folder. Nothing is written
# outside it: clients find the cluster through SLURM_CONF, printed at the end.
#
#   slurm/start-cluster.sh             # prints: export SLURM_CONF=/tmp/shardprep-slurm/etc/slurm.conf
#   eval "$(slurm/start-cluster.sh)"   # same, and sets it in this shell
#   slurm/stop-cluster.sh
#
# Settings (environment):
#   SHARDPREP_SLURM_DIR=/tmp/shardprep-slurm  everything: config, munge key/socket, state, logs
#   SHARDPREP_SLURM_NODES=3                   virtual nodes (hetjobs need >= 2, see docs/slurm.md)
#   SHARDPREP_SLURM_CPUS=4                    CPUs declared per node (may exceed the real ones)
#   SHARDPREP_SLURM_PORT=26817                slurmctld port; the slurmd use the next N ports
#   SHARDPREP_SLURM_INSTALL=1                 apt-get install the daemons when missing
#   SHARDPREP_SLURM_WAIT=60                   seconds to wait for the nodes to come up
#
# Needs root (slurmd runs jobs as their users). Running it again with the same settings
# while the cluster answers does nothing; otherwise it restarts from a clean state.
set -euo pipefail

DIR=${SHARDPREP_SLURM_DIR:-/tmp/shardprep-slurm}
NODES=${SHARDPREP_SLURM_NODES:-3}
CPUS=${SHARDPREP_SLURM_CPUS:-4}
PORT=${SHARDPREP_SLURM_PORT:-26817}
INSTALL=${SHARDPREP_SLURM_INSTALL:-1}
WAIT=${SHARDPREP_SLURM_WAIT:-60}
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "start-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: slurmd must be root to start jobs as their users"
for v in NODES CPUS PORT WAIT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "SHARDPREP_SLURM_$v must be a positive integer, got '${!v}'"
done

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    [ -x /usr/sbin/munged ] || command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$INSTALL" = 1 ] || die "missing ${missing[*]}: apt-get install ${missing[*]} (or SHARDPREP_SLURM_INSTALL=1)"
    say "installing ${missing[*]} with apt-get"
    mkdir -p "$(dirname "$DIR")"
    local log=$DIR.apt.log
    # The packages' own services may refuse to start here (no systemd): we start ours.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$log" 2>&1 \
            || die "apt-get install ${missing[*]} failed; see $log"
    fi
}

# The whole configuration. cgroups are not usable in this kind of container, so the
# plugins that need them are replaced by the ones that do not.
render_conf() {
    local nodes="n[1-$NODES]" ports="[$((PORT + 1))-$((PORT + NODES))]"
    if [ "$NODES" -eq 1 ]; then nodes=n1; ports=$((PORT + 1)); fi
    cat <<EOF
# written by shardprep slurm/start-cluster.sh; rerun it instead of editing
ClusterName=shardprep
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=$nodes NodeAddr=127.0.0.1 NodeHostname=localhost Port=$ports CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Every node answers and can take jobs.
nodes_up() {
    local out
    out=$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    [ "$(grep -cE ' (idle|mix|alloc)$' <<<"$out")" -eq "$NODES" ]
}

already_running() {
    [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$WANT" ] || return 1
    alive "$DIR/run/munged.pid" && alive "$DIR/run/slurmctld.pid" || return 1
    local i
    for i in $(seq 1 "$NODES"); do alive "$DIR/run/slurmd-n$i.pid" || return 1; done
    nodes_up
}

start_munge() {
    local munged key=$DIR/munge/key/munge.key
    munged=$(command -v munged || echo /usr/sbin/munged)
    # munged refuses a socket folder others can write to or cannot enter, and a key
    # anyone but its owner can read.
    mkdir -p "$DIR/munge/key"
    chmod 0755 "$DIR" "$DIR/munge"
    chmod 0700 "$DIR/munge/key"
    [ -s "$key" ] || head -c 1024 /dev/urandom >"$key"
    chmod 0400 "$key"
    "$munged" --key-file="$key" --socket="$DIR/munge/socket" --pid-file="$DIR/run/munged.pid" \
        --seed-file="$DIR/munge/key/seed" --log-file="$DIR/log/munged.log" \
        || die "munged did not start: $(tail -n 3 "$DIR/log/munged.log" 2>/dev/null)"
    local _
    for _ in $(seq 1 50); do
        munge -S "$DIR/munge/socket" -n 2>/dev/null | unmunge -S "$DIR/munge/socket" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer on $DIR/munge/socket; see $DIR/log/munged.log"
}

start_slurm() {
    slurmctld -i || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    local _
    for _ in $(seq 1 100); do
        timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
        sleep 0.1
    done
    timeout 5 scontrol ping 2>/dev/null | grep -q UP \
        || die "slurmctld does not answer on port $PORT; see $DIR/log/slurmctld.log"
    local i
    for i in $(seq 1 "$NODES"); do
        slurmd -N "n$i" || die "slurmd n$i did not start: $(tail -n 5 "$DIR/log/slurmd-n$i.log" 2>/dev/null)"
    done
    local deadline=$((SECONDS + WAIT))
    until nodes_up; do
        if [ $SECONDS -ge $deadline ]; then
            timeout 10 sinfo -N >&2 || true
            die "nodes not up after ${WAIT}s; logs in $DIR/log"
        fi
        sleep 0.2
    done
}

install_packages
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
WANT=$(render_conf)

if ! already_running; then
    if [ -d "$DIR/run" ]; then
        say "restarting the cluster in $DIR"
        SHARDPREP_SLURM_DIR=$DIR "$HERE/stop-cluster.sh" >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/run" "$DIR/log"
    for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/spool/n$i"; done
    printf '%s\n' "$WANT" >"$CONF"
    start_munge
    start_slurm
fi
say "up: $NODES nodes x $CPUS CPUs, partition debug, logs in $DIR/log"
echo "export SLURM_CONF=$CONF"
