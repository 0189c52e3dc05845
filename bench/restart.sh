#!/usr/bin/env bash
# Restart and stop with data, as an operator meets them:
#  1. a volume of 16 partitions prefilled with DATA_MB MB each (200: 3.2 GB);
#  2. `sharedisk up --servers 3` on it: the time until it prints that the
#     cluster is up (every partition served, balanced), and whether any
#     server's session expired on the way;
#  3. SIGTERM of one server: the time until it exits, and whether every
#     partition is served by another server right after.
# Usage: bash bench/restart.sh   (DATA_MB=200 DIR=/tmp PORT=7400 to change)
# Needs a release build: cargo build --release --workspace
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_MB=${DATA_MB:-200}
PORT=${PORT:-7400}
BIN=target/release/sharedisk
BENCH=target/release/sharedisk-bench
[ -x "$BIN" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
dir=$(mktemp -d "${DIR:-/tmp}/sharedisk-restart.XXXXXX")
up=""
cleanup() { [ -n "$up" ] && kill "$up" 2>/dev/null && wait "$up" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$dir/up.log" "$KEEP_LOG"; cleanup' EXIT

size=$(( (DATA_MB * 16 * 3 / 2 + 256) ))MiB
"$BIN" volume create "$dir/volume" --size "$size" --partitions 16 >/dev/null
"$BENCH" prefill --volume "$dir/volume" --data-mb "$DATA_MB"

start=$(date +%s%N)
# Every claim logs a line (warm or cold), counted at the end.
SHAREDISK_LOG_CLAIMS=1 "$BIN" up --dir "$dir" --servers 3 --port "$PORT" >"$dir/up.log" 2>&1 &
up=$!
until grep -q "sharedisk is up" "$dir/up.log"; do
    kill -0 "$up" 2>/dev/null || { echo "up exited:"; cat "$dir/up.log"; exit 1; }
    sleep 0.05
done
echo "up --servers 3 on $DATA_MB MB per partition: serving and balanced after $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "sessions expired while starting: $(grep -c 'session expired' "$dir/up.log" || true)"
# `up` wrote the cluster secret there; admin proves it.
export SHAREDISK_SECRET_FILE="$dir/cluster.secret"

# Wait until every partition's standby reports itself synced, then stop s2.
deadline=$(( $(date +%s) + 120 ))
until "$BIN" admin --lockmgr "127.0.0.1:$PORT" status --json | tr -d ' \n' | grep -q '"standby_lag":{' \
    && ! "$BIN" admin --lockmgr "127.0.0.1:$PORT" status --json | tr -d ' \n' | grep -Eq '"standby_lag":null|"synced":false'; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "standbys not synced within 120 s"; exit 1; }
    sleep 0.2
done
pid=$(pgrep -f -- "--id s2( |$)" | head -1)
"$BIN" admin --lockmgr "127.0.0.1:$PORT" status | awk '$2 == "s2" && $1 ~ /^[0-9]+$/' | wc -l | xargs echo "partitions s2 owns:"
start=$(date +%s%N)
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
echo "SIGTERM of s2: exited after $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$BIN" admin --lockmgr "127.0.0.1:$PORT" status | awk '$1 ~ /^[0-9]+$/ && $2 == "-"' | wc -l | xargs echo "partitions without an owner right after:"
echo "claims in the servers' logs: $(grep -c 'claim: .* from its hot standby' "$dir/up.log" || true) from a standby," \
    "$(grep -c 'claim: .* cold' "$dir/up.log" || true) cold (the first server to start reads every log once)"
