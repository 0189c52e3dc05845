#!/usr/bin/env bash
# What TLS costs: sharedisk (up --servers 1) and Redis 7 (appendonly yes,
# appendfsync always: durable, like us), each plain and over TLS, side by side.
#
#   bash bench/tls.sh           (as root: installs redis-server, redis-tools, openssl)
#
# Makes a scratch CA and certificates for 127.0.0.1 with openssl, starts on
# 127.0.0.1 only:
#   - Redis, plain :7751 and TLS :7752 (one process, tls-auth-clients yes)
#   - sharedisk plain :7761 (lock manager :7760)
#   - sharedisk TLS   :7771 (lock manager :7770, --tls-auth-clients yes)
# runs redis-benchmark SET and GET (50 clients, 64 B values, -P 1 and -P 16,
# REPEAT runs, median; --tls with the client certificate for the TLS ports),
# and prints a markdown table: each TLS figure as a ratio of its own plain
# figure, and sharedisk's against Redis's. Everything it started is stopped,
# by pid, on exit.
#
# Knobs: REQUESTS (per run, default 100000), REPEAT (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-100000}
REPEAT=${REPEAT:-3}
HOST=127.0.0.1

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p sharedisk
SD=$PWD/target/release/sharedisk

work=$(mktemp -d /tmp/sharedisk-tls.XXXXXX)
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

# A CA, and a certificate each for the servers and the client (P-256).
pki=$work/pki
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -days 2 -subj "/CN=bench CA" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$pki/ext.cnf"
for n in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$n.key" -out "$pki/$n.csr" -subj "/CN=$n" 2>/dev/null
    openssl x509 -req -in "$pki/$n.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -out "$pki/$n.crt" -days 2 \
        -extfile "$pki/ext.cnf" 2>/dev/null
done
TLS_CLIENT=(--tls --cacert "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key")

wait_ping() { # port [tls flags...]
    local port=$1
    shift
    for _ in $(seq 300); do
        redis-cli -h $HOST -p "$port" "$@" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    echo "nothing answers on $HOST:$port" >&2
    exit 1
}

echo "== starting in $work" >&2
mkdir -p "$work/redis"
redis-server --bind $HOST --port 7751 --tls-port 7752 --tls-cert-file "$pki/server.crt" --tls-key-file "$pki/server.key" \
    --tls-ca-cert-file "$pki/ca.crt" --tls-auth-clients yes --dir "$work/redis" --save "" --appendonly yes --appendfsync always \
    --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_ping 7751
wait_ping 7752 "${TLS_CLIENT[@]}"

up_start() { # port name extra...
    local port=$1 name=$2
    shift 2
    "$SD" up --dir "$work/$name" --port "$port" --servers 1 --size 16GiB "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        grep -q 'connect:' "$work/$name.log" && return 0
        sleep 0.05
    done
    echo "sharedisk up ($name) did not come up:" >&2
    cat "$work/$name.log" >&2
    exit 1
}
up_start 7760 sd-plain
up_start 7770 sd-tls --tls-cert-file "$pki/server.crt" --tls-key-file "$pki/server.key" --tls-ca-cert-file "$pki/ca.crt"
wait_ping 7761
wait_ping 7771 "${TLS_CLIENT[@]}"

# One run of test $1 (SET or GET): its requests per second.
run_bench() { # test port pipeline [tls flags...]
    local t=$1 port=$2 pipeline=$3
    shift 3
    redis-benchmark -h $HOST -p "$port" "$@" -t "$(echo "$t" | tr A-Z a-z)" -c 50 -P "$pipeline" -d 64 -n "$REQUESTS" -r 100000 \
        --csv 2>/dev/null | awk -F'","' -v t="$t" '$1 == "\"" t { gsub(/"/, "", $0); split($0, f, ","); print f[2] }'
}

# The median of REPEAT runs.
median() { # test port pipeline [tls flags...]
    for _ in $(seq "$REPEAT"); do run_bench "$@"; done | sort -n | awk -v n="$REPEAT" '{ r[NR] = $0 } END { print r[int((n + 1) / 2)] }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "| test | Redis plain | Redis TLS (×plain) | sharedisk plain | sharedisk TLS (×plain) | sharedisk/Redis, TLS |"
echo "|---|---|---|---|---|---|"
for p in 1 16; do
    for t in SET GET; do
        rp=$(median $t 7751 $p)
        rt=$(median $t 7752 $p "${TLS_CLIENT[@]}")
        sp=$(median $t 7761 $p)
        st=$(median $t 7771 $p "${TLS_CLIENT[@]}")
        echo "| $t -P $p | $rp | $rt ($(ratio "$rt" "$rp")) | $sp | $st ($(ratio "$st" "$sp")) | $(ratio "$st" "$rt") |"
    done
done
