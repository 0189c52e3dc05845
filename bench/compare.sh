#!/usr/bin/env bash
# sharedisk against real Redis and etcd, side by side on this machine.
#
#   bash bench/compare.sh            (as root: installs what it needs from Debian)
#
# Starts on 127.0.0.1 only, each in a scratch directory:
#   - Redis with appendonly yes + appendfsync always (durable, like us)   :7701
#   - Redis with persistence off                                          :7702
#   - a 3-master Redis Cluster, appendfsync always                        :7711-7713
#   - sharedisk, one server owning every partition (up --servers 1)       :7721 (lock manager :7720)
#   - sharedisk, 3 servers (up --servers 3)                               :7731-7733 (lock manager :7730)
#   - etcd (for the lock comparison)                                      :7790
#   - a dedicated sharedisk lock manager (for the lock comparison)        :7740
# runs the same redis-benchmark commands against each (SET and GET, 50
# clients, -P 1 and -P 16, 64 B and 4 KiB values, REPEAT runs, median), then
# the named-lease workload against the lock manager, etcd and Redis, and
# prints markdown tables with the ratios. Everything it started is stopped,
# by pid, on exit.
#
# Knobs: REQUESTS (per run, default 100000), REPEAT (default 3), LOCK_SECONDS (default 2),
# TESTS (redis-benchmark tests, default set,get,hset; redis-benchmark's HSET
# writes fields of one hash, myhash), SIZES (default "64 4096"), PIPES
# (default "1 16"), LOCKS (default 1; 0 skips the lease comparison).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-100000}
REPEAT=${REPEAT:-3}
LOCK_SECONDS=${LOCK_SECONDS:-2}
TESTS=${TESTS:-set,get,hset}
SIZES=${SIZES:-64 4096}
PIPES=${PIPES:-1 16}
LOCKS=${LOCKS:-1}
UPPER_TESTS=$(echo "$TESTS" | tr 'a-z,' 'A-Z ')
HOST=127.0.0.1

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q --workspace
SD=$PWD/target/release/sharedisk
SDB=$PWD/target/release/sharedisk-bench

work=$(mktemp -d /tmp/sharedisk-compare.XXXXXX)
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

wait_ping() { # port
    for _ in $(seq 200); do
        redis-cli -h $HOST -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "nothing answers on $HOST:$1" >&2
    exit 1
}

redis_start() { # port name extra...
    local port=$1 name=$2
    shift 2
    mkdir -p "$work/$name"
    redis-server --bind $HOST --port "$port" --dir "$work/$name" --save "" --daemonize no "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    wait_ping "$port"
}

echo "== starting peers in $work" >&2
redis_start 7701 redis-aof --appendonly yes --appendfsync always
redis_start 7702 redis-mem --appendonly no
for p in 7711 7712 7713; do
    redis_start $p "cluster-$p" --cluster-enabled yes --cluster-config-file "$work/nodes-$p.conf" --appendonly yes --appendfsync always
done
redis-cli --cluster create $HOST:7711 $HOST:7712 $HOST:7713 --cluster-replicas 0 --cluster-yes >"$work/cluster-create.log" 2>&1
for _ in $(seq 200); do
    redis-cli -h $HOST -p 7711 cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.05
done

up_start() { # port servers name
    # 16 GiB sparse: 1 GiB per partition. redis-benchmark --cluster (7.0) sends all
    # of a node's keys to one slot, so one partition per server holds all of them.
    "$SD" up --dir "$work/$3" --port "$1" --servers "$2" --size 16GiB >"$work/$3.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        grep -q 'redis-cli -c' "$work/$3.log" && return 0
        sleep 0.05
    done
    echo "sharedisk up ($3) did not come up:" >&2
    cat "$work/$3.log" >&2
    exit 1
}
up_start 7720 1 sd1
up_start 7730 3 sd3

etcd --name compare --data-dir "$work/etcd" --listen-client-urls http://$HOST:7790 --advertise-client-urls http://$HOST:7790 \
    --listen-peer-urls http://$HOST:7791 --initial-advertise-peer-urls http://$HOST:7791 \
    --initial-cluster compare=http://$HOST:7791 >"$work/etcd.log" 2>&1 &
pids+=($!)
"$SD" volume create "$work/locks.vol" --size 64MiB --partitions 4 >/dev/null
"$SD" lockmgr --volume "$work/locks.vol" --listen $HOST:7740 >"$work/lockmgr.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
    etcdctl --endpoints=http://$HOST:7790 endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done

# One redis-benchmark run: prints "rps p50 p99" for SET then GET.
run_bench() { # port cluster(0|1) pipeline size
    local cl=()
    [ "$2" = 1 ] && cl=(--cluster)
    redis-benchmark -h $HOST -p "$1" "${cl[@]}" -t "$TESTS" -c 50 -P "$3" -d "$4" -n "$REQUESTS" -r 100000 --csv 2>/dev/null |
        awk -F'","' '/^"(SET|GET|HSET)"/ { gsub(/"/, "", $0); split($0, f, ","); print f[1], f[2], f[5], f[7] }'
}

# Median of REPEAT runs per test: "SET rps p50 p99" and "GET rps p50 p99".
median_bench() {
    local runs=""
    for _ in $(seq "$REPEAT"); do runs+="$(run_bench "$@")"$'\n'; done
    for t in $UPPER_TESTS; do
        printf '%s\n' "$runs" | awk -v t=$t '$1 == t' | sort -k2 -n |
            awk -v n="$REPEAT" '{ r[NR] = $0 } END { print r[int((n + 1) / 2)] }'
    done
}

# Error replies so far, summed over ports (redis-benchmark counts an error
# reply as a completed request, so a run with errors would look fast).
errors() { # ports (comma-separated)
    local n=0 v
    for p in ${1//,/ }; do
        v=$(redis-cli -h $HOST -p "$p" info stats | tr -d '\r' | awk -F: '/^total_error_replies:/ { print $2 }')
        n=$((n + ${v:-0}))
    done
    echo $n
}

declare -A R E
targets=("redis-aof 7701 0 7701" "redis-mem 7702 0 7702" "sd1 7721 0 7721" "redis-cluster 7711 1 7711,7712,7713" "sd3 7731 1 7731,7732,7733")
for size in $SIZES; do
    for pipe in $PIPES; do
        for t in "${targets[@]}"; do
            read -r name port cluster ports <<<"$t"
            echo "== $name -P $pipe -d $size" >&2
            e0=$(errors "$ports")
            while read -r test rps p50 p99; do
                R[$name,$test,$pipe,$size]="$rps $p50 $p99"
            done < <(median_bench "$port" "$cluster" "$pipe" "$size")
            E[$name,$pipe,$size]=$(($(errors "$ports") - e0))
        done
    done
done

fmt() { # "rps p50 p99" [errors] -> "rps / p50 / p99"
    read -r rps p50 p99 <<<"$1"
    printf "%.0f / %s / %s" "$rps" "$p50" "$p99"
    [ "${2:-0}" -gt 0 ] && printf " (**%s error replies: not valid**)" "$2"
    return 0
}
ratio() { # a b -> a/b of the rps fields
    read -r a _ <<<"$1"
    read -r b _ <<<"$2"
    awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
}

echo
echo "### redis-benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, -c 50 -n $REQUESTS -r 100000, median of $REPEAT"
echo
echo "ops/s / p50 ms / p99 ms. Durable: Redis with appendfsync always, sharedisk (acknowledged = fdatasynced)."
echo "A run during which a target sent error replies is marked: redis-benchmark counts errors as completed requests."
echo
echo "| test | -P | value | Redis fsync always | Redis no persistence | sharedisk 1 server | ratio | Redis Cluster 3 masters (fsync always) | sharedisk 3 servers | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in $SIZES; do
    for pipe in $PIPES; do
        for test in $UPPER_TESTS; do
            a=${R[redis-aof,$test,$pipe,$size]:-0 - -}
            m=${R[redis-mem,$test,$pipe,$size]:-0 - -}
            s1=${R[sd1,$test,$pipe,$size]:-0 - -}
            c=${R[redis-cluster,$test,$pipe,$size]:-0 - -}
            s3=${R[sd3,$test,$pipe,$size]:-0 - -}
            echo "| $test | $pipe | $size B | $(fmt "$a" "${E[redis-aof,$pipe,$size]}") | $(fmt "$m" "${E[redis-mem,$pipe,$size]}") | $(fmt "$s1" "${E[sd1,$pipe,$size]}") | $(ratio "$s1" "$a") | $(fmt "$c" "${E[redis-cluster,$pipe,$size]}") | $(fmt "$s3" "${E[sd3,$pipe,$size]}") | $(ratio "$s3" "$c") |"
        done
    done
done

[ "$LOCKS" = 1 ] || exit 0
echo
echo "### Named leases: acquire + release of random names out of 1024, $LOCK_SECONDS s each"
echo
"$SDB" locks --lockmgr $HOST:7740 --etcd $HOST:7790 --redis $HOST:7701 --seconds "$LOCK_SECONDS" --json >"$work/locks.json"
python3 - "$work/locks.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
by = {(r["system"], r["clients"]): r for r in rows}
print("| clients | sharedisk lock manager pairs/s (p50/p99 us) | etcd lock API | Redis SET NX PX (fsync always) | sharedisk / etcd | sharedisk / Redis |")
print("|---:|---:|---:|---:|---:|---:|")
for c in (1, 64):
    s, e, r = by[("sharedisk lock manager", c)], by[("etcd lock API", c)], by[("Redis SET NX PX", c)]
    cell = lambda x: f"{x['per_s']:.0f} ({x['p50_us']}/{x['p99_us']})"
    print(f"| {c} | {cell(s)} | {cell(e)} | {cell(r)} | {s['per_s'] / e['per_s']:.2f} | {s['per_s'] / r['per_s']:.2f} |")
EOF
