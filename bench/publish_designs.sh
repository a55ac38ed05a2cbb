#!/usr/bin/env bash
# Times publish_designs.c's modes on the work disk (bench/SPEED-DESIGNS.md), alternating,
# caches dropped before each run (root), the `sync` after it timed apart.
#   bench/publish_designs.sh [NFILES] [REPS] ["mode:threads ..."]    (x2<mode>: two processes)
# Outputs are moved to $BENCH_WORK/designs-trash and deleted at the end (deleting just
# before a run slows its creation: see bench/README.md).
# PD_FRESH_FS=1 (root): each run in a new ext4 on a loop device instead (PD_FS_GB=12), to
# compare designs without the work disk's history (not how users run). Made as ab.py's
# FreshFs makes its filesystem (inode tables written at mkfs, not by a kernel thread during
# the run; direct I/O to the image, so the flush reaches the disk once), but without a
# journal, like the work disk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${BENCH_WORK:-$here/work}"
n="${1:-150000}"; reps="${2:-3}"
modes="${3:-inplace:1 tmpfile:1 tmpfile_empty:1 tmpfile:2 pipe_empty:1 x2tmpfile_empty:1 x2inplace:1}"
bin="$work/publish_designs"; out="$work/designs-out"; trash="$work/designs-trash"
mkdir -p "$out" "$trash"
gcc -O2 -o "$bin" "$here/publish_designs.c" -lpthread
for r in $(seq "$reps"); do
  for mt in $modes; do
    m=${mt%%:*}; t=${mt##*:}; d="$out/$m-$t-$r"
    if [[ "${PD_FRESH_FS:-0}" == 1 ]]; then
      truncate -s "${PD_FS_GB:-12}G" "$work/pd-fs.img"
      mkfs.ext4 -q -F -O ^has_journal -N $((n * 4)) -E lazy_itable_init=0,nodiscard "$work/pd-fs.img"
      dev=$(losetup --direct-io=on --show -f "$work/pd-fs.img")
      mount -o nodiscard "$dev" "$out"
    fi
    mkdir -p "$d"
    sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    load=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    if [[ $m == x2* ]]; then
      /usr/bin/time -f "%U %S" -o "$work/pd.time" bash -c \
        "PFX=a '$bin' ${m#x2} '$d' $((n / 2)) $t & PFX=b '$bin' ${m#x2} '$d' $((n / 2)) $t & wait"
    else
      /usr/bin/time -f "%U %S" -o "$work/pd.time" "$bin" "$m" "$d" "$n" "$t"
    fi
    e=$(date +%s.%N); sync; f=$(date +%s.%N)
    read -r u sy < "$work/pd.time"
    printf "| %s | %s | %d | %.2f | %.2f | %s+%s | %s |\n" "$m" "$t" "$r" "$(echo "$e-$s" | bc)" \
      "$(echo "$f-$e" | bc)" "$u" "$sy" "$load"
    if [[ "${PD_FRESH_FS:-0}" == 1 ]]; then
      umount "$out"; losetup -d "$dev"; rm -f "$work/pd-fs.img"
    else
      mv "$d" "$trash/$(date +%s%N)"
    fi
  done
done
rm -rf "$trash"
