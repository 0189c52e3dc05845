#!/bin/bash
# The named-lease workload alone, side by side: our lock manager against
# Redis `SET NX PX` with appendonly yes + appendfsync always (durable, as the
# lock manager is), three rounds, 1 and 64 clients. The same comparison as
# the locks part of bench/compare.sh, without the rest of it.
#
#   cargo build --release --workspace && bash bench/locks.sh [SECONDS]
#
# Needs redis-server and redis-cli. Ports 7790 (lock manager) and 7791 (Redis).
set -euo pipefail
seconds=${1:-3}
bin=${SHAREDISK_BIN:-target/release}
work=$(mktemp -d)
lm=""
cleanup() {
    [ -n "$lm" ] && kill "$lm" 2>/dev/null || true
    redis-cli -p 7791 shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
redis-server --port 7791 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$work" --daemonize yes >/dev/null
"$bin/sharedisk" volume create "$work/locks.vol" --size 64MiB --partitions 4 >/dev/null
"$bin/sharedisk" lockmgr --volume "$work/locks.vol" --listen 127.0.0.1:7790 >"$work/lockmgr.log" 2>&1 &
lm=$!
for _ in $(seq 100); do
    grep -q "lockmgr: serving" "$work/lockmgr.log" && redis-cli -p 7791 ping >/dev/null 2>&1 && break
    sleep 0.05
done
for round in 1 2 3; do
    echo "round $round"
    "$bin/sharedisk-bench" locks --lockmgr 127.0.0.1:7790 --redis 127.0.0.1:7791 --seconds "$seconds" | grep -E "^\| (system|sharedisk|Redis)"
done
