#!/usr/bin/env bash
# Side-by-side kv benchmark: koshka vs memcached 1.6, on this machine, in one run.
#
#   scripts/bench-kv.sh                       # 5 alternating pairs per scenario, 10 s runs
#   PAIRS=10 DURATION=10 scripts/bench-kv.sh
#   KOSHKA_ARGS="--durability everysec" scripts/bench-kv.sh
#
# Environment:
#   PAIRS=5            alternating (koshka, memcached) pairs per scenario; medians are reported
#   DURATION=10        seconds per run (koshka bench adds a 1 s warm-up)
#   KOSHKA_ARGS=""     extra flags for `koshka serve` (e.g. --durability none|everysec)
#   KOSHKA_BIN=target/release/koshka
#   KOSHKA_BENCH_CMD   load generator command (default "$KOSHKA_BIN bench")
#   RSS_ITEMS=1000000  items loaded for the memory measurement
#   SKIP_RSS=1         skip the memory measurement
#
# Servers (free loopback ports, stopped by PID):
#   memcached -l 127.0.0.1 -p PORT -U 0 -u root -t 2 -m 4096 -c 4096
#   koshka serve --listen 127.0.0.1:PORT --data-dir TMP --threads 2 --engines kv $KOSHKA_ARGS
# Load, per scenario, against each server in turn (order alternates between pairs):
#   memcaslap -s 127.0.0.1:PORT -F CFG -c 64 -T 2 -t ${DURATION}s -X 100 [-d 10]
#       CFG: key 32 32 1 / value 100 100 1 / cmd 0 <set share> + 1 <get share>
#   koshka bench --server 127.0.0.1:PORT --connections 64 --threads 2 --keys 100000 \
#       --key-size 32 --value-size 100 --get-ratio R --pipeline P --multiget M \
#       --duration $DURATION --warmup 1 --preload --json
#   Scenarios: 90/10 and 50/50 get/set at pipeline 1 (both tools), 90/10 at pipeline 16
#   (koshka bench only: memcaslap cannot pipeline), 90/10 with 10-key multi-gets (both).
# Memory: a fresh server of each kind is loaded with RSS_ITEMS items of 32-byte keys and
# 100-byte values (`koshka bench --preload --keys N`, or pymemcache if no `koshka bench`),
# then VmRSS is read from /proc/PID/status.
# No taskset: with 2 cores, pinning the 2-thread servers or the client to one core each
# measures the pinning, not the server; client and server share both cores for both servers.
# Noise on these 2-core VMs is about ±15 %: use PAIRS >= 10 for numbers you quote.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-10}
KOSHKA_ARGS=${KOSHKA_ARGS:-}
KOSHKA_BIN=${KOSHKA_BIN:-target/release/koshka}
RSS_ITEMS=${RSS_ITEMS:-1000000}
CONNECTIONS=64

for tool in memcached memcaslap python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/test.sh once to install" >&2; exit 1; }
done

workdir=$(mktemp -d /tmp/koshka-bench-kv.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

if [[ -z ${KOSHKA_BENCH_CMD:-} ]] || [[ $KOSHKA_BIN == target/release/koshka ]]; then
    echo "== building $KOSHKA_BIN" >&2
    cargo build --release -p koshka --bin koshka >&2 || echo "build of koshka failed" >&2
fi
have_koshka=0
if koshka_has_serve "$KOSHKA_BIN"; then
    have_koshka=1
else
    echo "NOTE: $KOSHKA_BIN has no 'serve --listen' yet: skipping koshka, measuring memcached only" >&2
fi
BENCH_CMD=${KOSHKA_BENCH_CMD:-"$KOSHKA_BIN bench"}
have_bench=0
# shellcheck disable=SC2086
if timeout 10 $BENCH_CMD --help 2>&1 | grep -q -- '--pipeline'; then
    have_bench=1
else
    echo "NOTE: '$BENCH_CMD' is not available: koshka bench rows skipped" >&2
fi

# start_server KIND: starts a fresh server, prints "PID PORT".
start_server() {
    local kind=$1 port pid
    port=$(free_port)
    if [[ $kind == memcached ]]; then
        # shellcheck disable=SC2046
        memcached $(memcached_args "$port") -t 2 -m 4096 -c 4096 >"$workdir/$kind.log" 2>&1 &
    else
        local data="$workdir/data-$port"
        # shellcheck disable=SC2086
        "$KOSHKA_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 --engines kv \
            $KOSHKA_ARGS >"$workdir/$kind.log" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
    wait_version "$port" "$pid" 60 >&2 || { cat "$workdir/$kind.log" >&2; return 1; }
    echo "$pid $port"
}

# run_memcaslap PORT GET_RATIO MULTIGET: prints ops/s (TPS).
run_memcaslap() {
    local port=$1 ratio=$2 multiget=$3 cfg="$workdir/memcaslap.cfg"
    python3 - "$ratio" >"$cfg" <<'PY'
import sys
get = float(sys.argv[1])
print(f"key\n32 32 1\nvalue\n100 100 1\ncmd\n0 {1 - get:.2f}\n1 {get:.2f}")
PY
    local extra=()
    ((multiget > 1)) && extra=(-d "$multiget")
    timeout $((DURATION + 60)) memcaslap -s "127.0.0.1:$port" -F "$cfg" -c "$CONNECTIONS" -T 2 \
        -t "${DURATION}s" -X 100 "${extra[@]}" >"$workdir/memcaslap.out" 2>&1 || true
    grep -Eo 'TPS: [0-9]+' "$workdir/memcaslap.out" | tail -1 | awk '{print $2}'
}

# run_bench PORT GET_RATIO PIPELINE MULTIGET: prints "ops/s p99_us" from koshka bench --json;
# for multi-gets ops/s is keys/s, which is what memcaslap's TPS counts (one op per key).
run_bench() {
    local port=$1 ratio=$2 pipeline=$3 multiget=$4
    # shellcheck disable=SC2086
    timeout $((DURATION + 120)) $BENCH_CMD --server "127.0.0.1:$port" \
        --connections "$CONNECTIONS" --threads 2 --keys 100000 --key-size 32 --value-size 100 \
        --get-ratio "$ratio" --pipeline "$pipeline" --multiget "$multiget" \
        --duration "$DURATION" --warmup 1 --preload --json >"$workdir/bench.json" 2>&1 || true
    local field=ops_per_sec
    ((multiget > 1)) && field=keys_per_sec
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r[sys.argv[2]]), round(r["latency_us"]["p99"]))' \
        "$workdir/bench.json" "$field" 2>/dev/null || { cat "$workdir/bench.json" >&2; echo ""; }
}

# Scenarios: name tool get_ratio pipeline multiget
scenarios=(
    "get90-p1 memcaslap 0.9 1 1"
    "get90-p1 bench 0.9 1 1"
    "get50-p1 memcaslap 0.5 1 1"
    "get50-p1 bench 0.5 1 1"
    "get90-p16 bench 0.9 16 1"
    "mget10-p1 memcaslap 0.9 1 10"
    "mget10-p1 bench 0.9 1 10"
)
servers=(memcached)
((have_koshka)) && servers=(koshka memcached)

results="$workdir/results.tsv"
: >"$results"
read -r mc_pid mc_port < <(start_server memcached)
if ((have_koshka)); then read -r k_pid k_port < <(start_server koshka); fi

for ((pair = 1; pair <= PAIRS; pair++)); do
    for scenario in "${scenarios[@]}"; do
        read -r name tool ratio pipeline multiget <<<"$scenario"
        [[ $tool == bench ]] && ((have_bench == 0)) && continue
        order=("${servers[@]}")
        if ((pair % 2 == 0)) && ((${#servers[@]} == 2)); then order=(memcached koshka); fi
        for server in "${order[@]}"; do
            port=$mc_port
            [[ $server == koshka ]] && port=$k_port
            p99=-
            if [[ $tool == memcaslap ]]; then
                ops=$(run_memcaslap "$port" "$ratio" "$multiget")
            else
                read -r ops p99 < <(run_bench "$port" "$ratio" "$pipeline" "$multiget") || true
            fi
            echo "pair $pair $name $tool $server: ${ops:-FAILED} ops/s p99 ${p99:--} us" >&2
            [[ -n $ops ]] && printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$tool" "$server" "$ops" "${p99:--}" >>"$results"
        done
    done
done
stop_pid "$mc_pid"
if ((have_koshka)); then stop_pid "$k_pid"; fi

# rss_after_load KIND: loads RSS_ITEMS items into a fresh server, prints "VmRSS_kB curr_items".
rss_after_load() {
    local kind=$1 pid port
    read -r pid port < <(start_server "$kind")
    if ((have_bench)); then
        # shellcheck disable=SC2086
        timeout 600 $BENCH_CMD --server "127.0.0.1:$port" --connections 16 --threads 2 \
            --keys "$RSS_ITEMS" --key-size 32 --value-size 100 --get-ratio 1 --preload \
            --duration 0.1 --warmup 0 --json >/dev/null
    else
        timeout 600 python3 - "$port" "$RSS_ITEMS" <<'PY'
import sys
from pymemcache.client.base import Client
port, items = int(sys.argv[1]), int(sys.argv[2])
c = Client(("127.0.0.1", port), default_noreply=False)
value = bytes((ord("a") + i % 26) for i in range(100))
batch = {}
for i in range(items):
    batch[f"key:{i:028d}"] = value
    if len(batch) == 1000:
        assert c.set_many(batch) == []
        batch = {}
if batch:
    assert c.set_many(batch) == []
PY
    fi
    local rss items
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    items=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "stats\r\nquit\r\n" >&3; cat <&3' _ "$port" |
        tr -d '\r' | awk '$2 == "curr_items" {print $3}')
    stop_pid "$pid"
    echo "$rss ${items:-?}"
}

rss_lines=()
if [[ ${SKIP_RSS:-0} != 1 ]]; then
    for server in "${servers[@]}"; do
        read -r rss items < <(rss_after_load "$server")
        rss_lines+=("$server $rss $items")
        echo "rss $server: ${rss} kB with $items items" >&2
    done
fi

echo
echo "## koshka vs memcached, kv ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS pairs x ${DURATION}s," \
    "64 connections, 32 B keys, 100 B values, KOSHKA_ARGS='$KOSHKA_ARGS'"
echo
python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
p99s = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    name, tool, server, ops, p99 = line.split()
    if (name, tool) not in order:
        order.append((name, tool))
    runs[(name, tool, server)].append(int(ops))
    if p99 != "-":
        p99s[(name, tool, server)].append(int(p99))
print("ops/s = requests/s, except mget10 rows: keys/s (memcaslap counts one op per key)")
print()
print("| scenario | load generator | koshka ops/s (median) | memcached ops/s (median) | koshka/memcached | p99 µs koshka / memcached (median) | p99 ratio |")
print("|---|---|---:|---:|---:|---:|---:|")
for name, tool in order:
    k = runs.get((name, tool, "koshka"))
    m = runs.get((name, tool, "memcached"))
    km = statistics.median(k) if k else None
    mm = statistics.median(m) if m else None
    ratio = f"{km / mm:.2f}x" if km and mm else "n/a"
    fmt = lambda v: f"{v:,.0f}" if v else "n/a"
    label = "memcaslap" if tool == "memcaslap" else "koshka bench"
    kp = p99s.get((name, tool, "koshka"))
    mp = p99s.get((name, tool, "memcached"))
    kpm = statistics.median(kp) if kp else None
    mpm = statistics.median(mp) if mp else None
    lat = f"{kpm:,.0f} / {mpm:,.0f}" if kpm and mpm else "n/a"
    lat_ratio = f"{kpm / mpm:.2f}x" if kpm and mpm else "n/a"
    print(f"| {name} | {label} | {fmt(km)} | {fmt(mm)} | {ratio} | {lat} | {lat_ratio} |")
PY
if ((${#rss_lines[@]} > 0)); then
    echo
    echo "| server | items | VmRSS after loading $RSS_ITEMS items (MiB) |"
    echo "|---|---:|---:|"
    for line in "${rss_lines[@]}"; do
        read -r server rss items <<<"$line"
        echo "| $server | $items | $(awk -v kb="$rss" 'BEGIN {printf "%.1f", kb / 1024}') |"
    done
    if ((${#rss_lines[@]} == 2)); then
        read -r _ k_rss _ <<<"${rss_lines[0]}"
        read -r _ m_rss _ <<<"${rss_lines[1]}"
        echo
        echo "RSS koshka/memcached: $(awk -v k="$k_rss" -v m="$m_rss" 'BEGIN {printf "%.2fx", k / m}')"
    fi
fi
