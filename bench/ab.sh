#!/usr/bin/env bash
# A same-sitting A/B of two revisions of sharedisk: one server (up --servers 1),
# redis-benchmark SET and GET at -P 1 and -P 16, alternating A and B for ROUNDS rounds.
#
#   bash bench/ab.sh BASE_REV [NEW_REV]      (NEW_REV defaults to the working tree)
#
# Each revision is built in release mode in its own scratch worktree and target
# directory; each round starts a fresh cluster on a fresh volume (127.0.0.1
# only) and stops it by pid. Prints one markdown row per test and round, and
# the median per revision with the ratio B/A.
#
# Knobs: ROUNDS (default 3), REQUESTS (default 100000), CLIENTS (default 50),
# KEYSPACE (-r, default 100000), VALUE (-d, default 64), PREFILL (keys of VALUE
# bytes written before measuring, default 0; e.g. PREFILL=200000 VALUE=1000 for
# ~200 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${1:?usage: bench/ab.sh BASE_REV [NEW_REV]}
NEW=${2:-}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
VALUE=${VALUE:-64}
PREFILL=${PREFILL:-0}
PORT=7820

command -v redis-benchmark >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-tools >/dev/null
}

work=$(mktemp -d /tmp/sharedisk-ab.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for w in "$work"/src-*; do [ -d "$w" ] && git worktree remove --force "$w" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

build() { # rev name -> path of the binary
    local rev=$1 name=$2
    if [ -z "$rev" ]; then
        cargo build --release -q
        echo "$PWD/target/release/sharedisk"
        return
    fi
    git worktree add -q --detach "$work/src-$name" "$rev" >/dev/null
    (cd "$work/src-$name" && CARGO_TARGET_DIR="$work/target-$name" cargo build --release -q)
    echo "$work/target-$name/release/sharedisk"
}

A=$(build "$BASE" a)
B=$(build "$NEW" b)
echo "A = $BASE ($A)" >&2
echo "B = ${NEW:-working tree} ($B)" >&2

run_round() { # binary label round
    local bin=$1 label=$2 round=$3 dir="$work/run-$2-$3"
    "$bin" up --dir "$dir" --port $PORT --servers 1 --size 4GiB >"$dir.log" 2>&1 &
    local pid=$!
    pids+=($pid)
    for _ in $(seq 600); do grep -q 'redis-cli -c' "$dir.log" && break; sleep 0.05; done
    grep -q 'redis-cli -c' "$dir.log" || { echo "up ($label) did not come up" >&2; cat "$dir.log" >&2; exit 1; }
    local port=$((PORT + 1))
    if [ "$PREFILL" -gt 0 ]; then
        redis-benchmark -h 127.0.0.1 -p $port -t set -n "$PREFILL" -r "$PREFILL" -d "$VALUE" -c 50 -P 32 -q >/dev/null
    fi
    for t in set get; do
        for p in 1 16; do
            local rps
            rps=$(redis-benchmark -h 127.0.0.1 -p $port -t $t -n "$REQUESTS" -r "$KEYSPACE" -d "$VALUE" -c "$CLIENTS" -P $p -q --csv |
                awk -F, 'NR>1 {gsub(/"/,"",$2); print int($2)}' | head -1)
            echo "$label $t $p $round $rps"
        done
    done
    kill -TERM $pid
    for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    rm -rf "$dir"
}

results="$work/results"
: >"$results"
for r in $(seq "$ROUNDS"); do
    run_round "$A" A "$r" >>"$results"
    run_round "$B" B "$r" >>"$results"
done

echo "| test | -P | A rounds (req/s) | B rounds (req/s) | A median | B median | B/A |"
echo "|---|---|---|---|---|---|---|"
for t in set get; do
    for p in 1 16; do
        a=$(awk -v t=$t -v p=$p '$1=="A" && $2==t && $3==p {print $5}' "$results" | paste -sd' ')
        b=$(awk -v t=$t -v p=$p '$1=="B" && $2==t && $3==p {print $5}' "$results" | paste -sd' ')
        am=$(echo "$a" | tr ' ' '\n' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
        bm=$(echo "$b" | tr ' ' '\n' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
        ratio=$(awk -v a="$am" -v b="$bm" 'BEGIN {printf "%.2f", b/a}')
        echo "| ${t^^} | $p | $a | $b | $am | $bm | $ratio |"
    done
done
