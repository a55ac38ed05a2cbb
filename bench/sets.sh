# Sourced by run.sh and ab.sh: the deterministic bench data sets (see README), and the
# create-floor program both time.
# make_sets GEN_BIN: for each set in $BENCH_SETS, generates
# $BENCH_WORK/data/<set>[-quick]/shards with `GEN_BIN generate --seed $BENCH_SEED` (default 42) unless its
# stamp matches (or BENCH_REGEN=1), then exports BENCH_SET_DIRS="name=dir ...".
SEED="${BENCH_SEED:-42}"  # another seed gives held-out shards (other names, sizes, captions)

# build_floor: builds bench/create_floor.c (only creating the output's files) into
# $BENCH_WORK/bin and exports FLOOR_BIN; fails without gcc.
build_floor() {
    command -v gcc >/dev/null || return 1
    mkdir -p "$BENCH_WORK/bin"
    gcc -O2 -pthread "$BENCH_DIR/create_floor.c" -o "$BENCH_WORK/bin/create_floor" || return 1
    export FLOOR_BIN="$BENCH_WORK/bin/create_floor"
}

set_params() {  # name -> "shards samples image_bytes"
    local q="$BENCH_QUICK"
    case "$1" in
        small) [[ "$q" == 1 ]] && echo "2 500 1024"    || echo "10 10000 1024" ;;
        big)   [[ "$q" == 1 ]] && echo "2 8 1048576"   || echo "4 500 1048576" ;;
        # One shard of `small` (30,000 output files): a short A/B when disk or time is short.
        one)   [[ "$q" == 1 ]] && echo "1 500 1024"    || echo "1 10000 1024" ;;
        *) log "unknown set $1 (known: small big one)"; exit 2 ;;
    esac
}

make_sets() {
    local gen="$1" set shards samples bytes suffix dir stamp
    local -a dirs=()
    for set in $BENCH_SETS; do
        read -r shards samples bytes < <(set_params "$set")
        suffix=""; [[ "$BENCH_QUICK" == 1 ]] && suffix="-quick"
        dir="$BENCH_WORK/data/$set$suffix"
        stamp="shards=$shards samples=$samples image_bytes=$bytes seed=$SEED"
        if [[ "${BENCH_REGEN:-0}" == 1 || ! -f "$dir/stamp" || "$(cat "$dir/stamp")" != "$stamp" ]]; then
            log "generating $set$suffix: $stamp"
            rm -rf "$dir"
            mkdir -p "$dir"
            "$gen" generate --output "$dir/shards" --shards "$shards" --samples "$samples" \
                --image-bytes "$bytes" --seed "$SEED"
            echo "$stamp" > "$dir/stamp"
            # Which generator made the data (its JSON fields change between versions).
            { sha256sum "$gen" | cut -c1-12; cat "$gen.commit" 2>/dev/null || true; } > "$dir/generator"
        fi
        dirs+=("$set=$dir")
    done
    export BENCH_SET_DIRS="${dirs[*]}"
}
