#!/usr/bin/env bash
# Redis's own test suite (7.0, Tcl, BSD-licensed) against sharedisk.
#
# The suite is obtained at run time from Debian's source package of redis
# and never copied into this repository. It runs with the stock harness in
# external mode (`--host/--port --cluster-mode`) against one `sharedisk up
# --servers 1` (it owns every slot) on a scratch volume, one unit file at a
# time, and prints a table of passed and failed tests per file; each
# failure's name goes to $OUT/FILE.failed (and the harness log to
# $OUT/FILE.log) to classify it.
#
# Usage: bash bench/redis-suite.sh [unit/type/string unit/expire ...]
#   (no files: the files issue 15 names; REDIS_SRC=DIR reuses an unpacked
#   redis-7.0.x source tree; PORT=7650; OUT=DIR keeps logs, default a temp dir;
#   BASELINE=1 runs the same files against a real redis-server --appendonly
#   yes --appendfsync always too, side by side.)
# Needs root for apt-get the first time (dpkg-dev, tcl), and a release
# build: cargo build --release --workspace
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release/sharedisk
PORT=${PORT:-7650}
[ -x "$BIN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(unit/type/string unit/type/incr unit/expire unit/keyspace unit/multi
    unit/protocol unit/scan unit/bitops unit/info-command unit/introspection unit/introspection-2)

work=$(mktemp -d "${TMPDIR:-/tmp}/sharedisk-suite.XXXXXX")
OUT=${OUT:-$work/out}
mkdir -p "$OUT"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$work/data" "$work/redis"
}
trap cleanup EXIT

# 1. The suite, from Debian's source package (deb-src written from the
#    system's own deb sources, removed again afterwards).
if [ -z "${REDIS_SRC:-}" ]; then
    if ! command -v tclsh >/dev/null || ! command -v dpkg-source >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev tcl >/dev/null
    fi
    list=/etc/apt/sources.list.d/sharedisk-redis-src.sources
    sed -n 's/^Types: deb$/Types: deb-src/; p' /etc/apt/sources.list.d/debian.sources >"$list"
    apt-get update -qq
    (cd "$work" && apt-get source -qq redis >/dev/null 2>&1) || { rm -f "$list"; echo "apt-get source redis failed" >&2; exit 1; }
    rm -f "$list"
    apt-get update -qq
    REDIS_SRC=$(ls -d "$work"/redis-7.*/ | head -1)
fi
[ -x "$REDIS_SRC/runtest" ] || { echo "no runtest in $REDIS_SRC" >&2; exit 1; }

wait_port() { # port pid
    local deadline=$(( $(date +%s) + 60 ))
    until redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; do
        kill -0 "$2" 2>/dev/null || { echo "server on port $1 exited" >&2; exit 1; }
        [ "$(date +%s)" -lt "$deadline" ] || { echo "port $1 not answering after 60 s" >&2; exit 1; }
        sleep 0.1
    done
}

# 2. One server owning every slot, on a scratch volume.
mkdir -p "$work/data"
"$BIN" up --dir "$work/data" --servers 1 --port "$PORT" >"$OUT/up.log" 2>&1 &
pids+=($!)
until grep -q "sharedisk is up" "$OUT/up.log"; do
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$OUT/up.log"; exit 1; }
    sleep 0.1
done
server_port=$((PORT + 1))
wait_port "$server_port" "${pids[0]}"

redis_port=""
if [ -n "${BASELINE:-}" ]; then
    command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    mkdir -p "$work/redis"
    redis_port=$((PORT + 20))
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
        --appendfsync always --save '' --daemonize no >"$OUT/redis.log" 2>&1 &
    pids+=($!)
    wait_port "$redis_port" "${pids[-1]}"
fi

# 3. Each file with the stock harness; a file's counts come from its log.
run() { # port file -> "passed failed"
    local log="$OUT/$(echo "$2" | tr / _).$1.log"
    (cd "$REDIS_SRC" && TERM=dumb ./runtest --host 127.0.0.1 --port "$1" --cluster-mode --durable --ignore-encoding --timeout 120 \
        --baseport 29464 --single "$2" >"$log" 2>&1) || true
    local ok err
    ok=$(grep -c '^\[ok\]' "$log" || true)
    err=$(grep -Ec '^\[(err|exception)\]' "$log" || true)
    grep -E '^\[(err|exception)\]' "$log" >"${log%.log}.failed" || true
    echo "$ok $err"
}
if [ -n "$redis_port" ]; then
    printf '%-26s %8s %8s   %s\n' file passed failed "(redis $redis_port: passed failed)"
else
    printf '%-26s %8s %8s\n' file passed failed
fi
total_ok=0 total_err=0
for f in "${FILES[@]}"; do
    read -r ok err < <(run "$server_port" "$f")
    total_ok=$((total_ok + ok)) total_err=$((total_err + err))
    if [ -n "$redis_port" ]; then
        read -r rok rerr < <(run "$redis_port" "$f")
        printf '%-26s %8s %8s   %s %s\n' "$f" "$ok" "$err" "$rok" "$rerr"
    else
        printf '%-26s %8s %8s\n' "$f" "$ok" "$err"
    fi
done
printf '%-26s %8s %8s\n' total "$total_ok" "$total_err"
echo "logs and the failed tests' names: $OUT"
