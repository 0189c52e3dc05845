#!/usr/bin/env bash
# Pub/sub throughput beside Redis: PUBLISH to one channel with SUBS
# subscribers, on Redis 7 (one process), sharedisk `up --servers 1`, and
# sharedisk `up --servers 3` (subscribers spread over the three servers, the
# publisher on the first: two thirds of each message's deliveries are
# forwarded to other servers).
#
#   bash bench/pubsub.sh      (as root: installs redis-server and redis-tools if missing)
#
# redis-benchmark sends `PUBLISH bench <64 B>` (50 clients, -P 1 and -P 16,
# REQUESTS each, REPEAT runs, median); every subscriber is a redis-cli whose
# output is counted afterwards, so the table says how many of the messages
# each subscriber received (pub/sub is at most once: a subscriber past its
# output limit is disconnected). Everything runs on 127.0.0.1 and shares the
# machine's cores; everything it started is stopped on exit.
#
# Knobs: SUBS (default 9), REQUESTS (default 100000), REPEAT (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-9}
REQUESTS=${REQUESTS:-100000}
REPEAT=${REPEAT:-3}
HOST=127.0.0.1
PAYLOAD=$(printf 'x%.0s' $(seq 64))

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p sharedisk
SD=$PWD/target/release/sharedisk

work=$(mktemp -d /tmp/sharedisk-pubsub.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_ping() {
    for _ in $(seq 300); do
        redis-cli -h $HOST -p "$1" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    echo "nothing answers on $HOST:$1" >&2
    exit 1
}

redis-server --bind $HOST --port 7851 --save "" --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_ping 7851

up_start() { # port servers name
    "$SD" up --dir "$work/$3" --port "$1" --servers "$2" --size 4GiB >"$work/$3.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        grep -q 'connect:' "$work/$3.log" && return 0
        sleep 0.05
    done
    echo "sharedisk up ($3) did not come up:" >&2
    cat "$work/$3.log" >&2
    exit 1
}
up_start 7860 1 sd1
up_start 7870 3 sd3
for p in 7861 7871 7872 7873; do wait_ping $p; done

# One setup: subscribers on the ports given (round-robin), the publisher
# on the first; prints "P1 P16 received%".
measure() { # name port...
    local name=$1
    shift
    local ports=("$@") subs=() files=()
    for i in $(seq 0 $((SUBS - 1))); do
        local port=${ports[$((i % ${#ports[@]}))]} f="$work/$name.sub$i"
        redis-cli -h $HOST -p "$port" subscribe bench >"$f" 2>&1 &
        subs+=($!)
        pids+=($!)
        files+=("$f")
    done
    # Every subscription in place before the first message.
    for _ in $(seq 300); do
        local n=0
        for port in "${ports[@]}"; do
            n=$((n + $(redis-cli -h $HOST -p "$port" pubsub numsub bench | sed -n 2p)))
        done
        [ "$n" -eq "$SUBS" ] && break
        sleep 0.05
    done
    local out=()
    for pl in 1 16; do
        out+=("$(for _ in $(seq "$REPEAT"); do
            redis-benchmark -h $HOST -p "${ports[0]}" -c 50 -P "$pl" -n "$REQUESTS" --csv PUBLISH bench "$PAYLOAD" 2>/dev/null |
                awk -F'","' 'NR == 2 { gsub(/"/, "", $2); print $2 }'
        done | sort -n | awk -v n="$REPEAT" '{ r[NR] = $0 } END { printf "%d", r[int((n + 1) / 2)] }')")
    done
    # Let the last messages arrive, then count them: 3 lines each (redis-cli
    # prints kind, channel, payload), after 3 lines of confirmation.
    local sent=$((2 * REPEAT * REQUESTS)) last=-1 got=0
    for _ in $(seq 100); do
        got=0
        for f in "${files[@]}"; do got=$((got + ($(wc -l <"$f") - 3) / 3)); done
        [ "$got" -eq "$last" ] && break
        last=$got
        sleep 0.2
    done
    for p in "${subs[@]}"; do kill "$p" 2>/dev/null || true; done
    # Why any went missing: forwards dropped, subscribers disconnected (sharedisk's INFO).
    local fwd=0 disc=0
    for port in "${ports[@]}"; do
        local info
        info=$(redis-cli -h $HOST -p "$port" info stats | tr -d '\r')
        fwd=$((fwd + $(echo "$info" | awk -F: '$1 == "sharedisk_pubsub_forwards_dropped" { print $2 }' | grep . || echo 0)))
        disc=$((disc + $(echo "$info" | awk -F: '$1 == "client_output_buffer_limit_disconnections" { print $2 }' | grep . || echo 0)))
    done
    echo "${out[0]} ${out[1]} $(awk -v g="$got" -v s="$sent" -v n="$SUBS" 'BEGIN { printf "%.1f", 100 * g / (s * n) }') $fwd $disc"
}

read -r r1 r16 rr _ rd < <(measure redis 7851)
read -r s1 s16 sr sf sd < <(measure sd1 7861)
read -r t1 t16 tr tf td < <(measure sd3 7871 7872 7873)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "PUBLISH of 64 B to one channel with $SUBS subscribers, 50 publishing clients, median of $REPEAT runs of $REQUESTS:"
echo
echo "| setup | -P 1 publishes/s | -P 16 publishes/s | messages received | forwards dropped | subscribers disconnected | ×Redis -P 1 | ×Redis -P 16 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| Redis 7, one process | $r1 | $r16 | $rr% | – | $rd | 1.00 | 1.00 |"
echo "| sharedisk, 1 server | $s1 | $s16 | $sr% | $sf | $sd | $(ratio "$s1" "$r1") | $(ratio "$s16" "$r16") |"
echo "| sharedisk, 3 servers (2/3 of deliveries forwarded) | $t1 | $t16 | $tr% | $tf | $td | $(ratio "$t1" "$r1") | $(ratio "$t16" "$r16") |"
