#!/usr/bin/env bash
# Disk taken by a churning workload on `up`'s default sparse volume.
#
# Starts `sharedisk up --servers 1` on a fresh 16 GiB sparse volume, writes
# N SETs of 1000-byte values over 100,000 keys (about 100 MB live) with
# redis-benchmark -P 16, and prints the SET rate and the disk the volume
# file takes (du) against its size.
#
# Usage: bash bench/space.sh [N=2000000] [BIN=target/release/sharedisk]
#   (PORT=7960; needs redis-benchmark and redis-cli: apt-get install redis-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000000}
BIN=${BIN:-target/release/sharedisk}
PORT=${PORT:-7960}
[ -x "$BIN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/sharedisk-space.XXXXXX")
up=""
cleanup() { [ -z "$up" ] || { kill "$up" 2>/dev/null; wait "$up" 2>/dev/null || true; }; rm -rf "$dir"; }
trap cleanup EXIT
"$BIN" up --dir "$dir" --servers 1 --port "$PORT" >"$dir/up.log" 2>&1 &
up=$!
deadline=$(( $(date +%s) + 60 ))
until grep -q "sharedisk is up" "$dir/up.log"; do
    kill -0 "$up" 2>/dev/null || { cat "$dir/up.log"; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "up not ready after 60 s" >&2; exit 1; }
    sleep 0.2
done
port=$((PORT + 1))
rate=$(redis-benchmark -p "$port" -t set -d 1000 -r 100000 -n "$N" -P 16 -q 2>&1 | tr '\r' '\n' | grep "requests per second" | tail -1)
echo "$N SETs of 1000 B over 100k keys: $rate"
echo "keys: $(redis-cli -p "$port" dbsize); volume: $(du -h --apparent-size "$dir/volume" | cut -f1) sparse, $(du -h "$dir/volume" | cut -f1) on disk"
