#!/usr/bin/env bash
# Common friends across shards: koshka proxy over SHARDS friends nodes vs Redis 7 on one server
# (two rows: ZINTER of two sorted sets, and SINTER of two plain sets, the issue's model) and
# one koshka node holding everything, in one run.
# A benchmark, not a test: it asserts nothing.
#
#   scripts/bench-proxy-friends.sh                 # 5 alternating rounds, 5 s runs
#   PAIRS=1 DURATION=2 EDGES=100000 scripts/bench-proxy-friends.sh   # smoke run
#
# Environment:
#   PAIRS=5 DURATION=5    rounds (order rotating) and measured seconds per run
#   SHARDS=8              friends nodes behind the proxy
#   USERS=100000 EDGES=1000000 BIG_DEGREE=1000   the data (koshka bench --workload friends)
#   CONNECTIONS="1 8"     connection counts to measure, each a scenario
#   KOSHKA_BIN=target/release/koshka (built if it is the default)
# Servers (free loopback ports, temp dirs, stopped by PID):
#   node n of SHARDS:  koshka serve --config node<n>.toml ([engines] shard_index = n,
#                      shard_count = SHARDS) --listen 127.0.0.1:0 --threads 1 --engines friends
#                      --durability everysec
#   proxy:  koshka proxy --config proxy.toml --threads 1 (one friends cluster over the nodes)
#   node:   koshka serve --threads 1 --engines friends (one node, every user)
#   redis:  redis-server --appendonly yes --appendfsync everysec --save ''
# Data: the same `koshka bench --workload friends --preload-only` into each target (through
# the proxy: every friendship is written to both users' shards); the common1k pairs are users
# given BIG_DEGREE friends each, so most pairs live on different shards.
# Load: koshka bench --workload friends --mix common1k --connections C --pipeline 1
#   (`get common_friends<a>,<b>` vs `ZINTER 2 f:<a> f:<b>` as target `redis`, and vs
#   `SINTER s:<a> s:<b>` as target `rsets`: the Redis preload runs with --redis-friend-sets, so
#   every user has both a sorted set and a plain set; `rsets` runs with the flag too).
# CPU: user + system time of the target's processes (the proxy and its nodes summed) over
# each run; 'per CPU-s' = common-friends answers per second of that CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-5}
SHARDS=${SHARDS:-8}
USERS=${USERS:-100000}
EDGES=${EDGES:-1000000}
BIG_DEGREE=${BIG_DEGREE:-1000}
CONNECTIONS=${CONNECTIONS:-"1 8"}
KOSHKA_BIN=${KOSHKA_BIN:-target/release/koshka}
command -v redis-server >/dev/null || { echo "missing redis-server: run scripts/test.sh once" >&2; exit 1; }
if [[ $KOSHKA_BIN == target/release/koshka ]]; then
    echo "== building $KOSHKA_BIN" >&2
    cargo build --release -p koshka --bin koshka >&2
fi

workdir=$(mktemp -d /tmp/koshka-bench-proxy-friends.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)

# Every target's processes, for CPU accounting.
declare -A procs_of=() port_of=()

node_ports=()
for ((n = 0; n < SHARDS; n++)); do
    printf '[engines]\nshard_index = %d\nshard_count = %d\n' "$n" "$SHARDS" >"$workdir/node$n.toml"
    "$KOSHKA_BIN" serve --config "$workdir/node$n.toml" --listen 127.0.0.1:0 --threads 1 \
        --engines friends --durability everysec --data-dir "$workdir/node$n" \
        >"$workdir/node$n.log" 2>&1 &
    pids+=($!)
    procs_of[proxy]+="$! "
done
for ((n = 0; n < SHARDS; n++)); do
    for ((i = 0; i < 600; i++)); do
        [[ -n $(reported_port "$workdir/node$n.log" friends) ]] && break
        sleep 0.05
    done
    node_ports+=("$(reported_port "$workdir/node$n.log" friends)")
    [[ -n ${node_ports[n]} ]] || { cat "$workdir/node$n.log" >&2; exit 1; }
done
port_of[proxy]=$(free_port)
{
    printf '[proxy]\nthreads = 1\n\n[[cluster]]\nname = "friends"\nengine = "friends"\n'
    printf 'listen = "127.0.0.1:%s"\nshards = [' "${port_of[proxy]}"
    printf '"127.0.0.1:%s",' "${node_ports[@]}"
    printf ']\n'
} >"$workdir/proxy.toml"
"$KOSHKA_BIN" proxy --config "$workdir/proxy.toml" --threads 1 >"$workdir/proxy.log" 2>&1 &
pids+=($!)
procs_of[proxy]+="$!"
wait_version "${port_of[proxy]}" "$!" 60 >&2 || { cat "$workdir/proxy.log" >&2; exit 1; }

"$KOSHKA_BIN" serve --listen 127.0.0.1:0 --threads 1 --engines friends --durability everysec \
    --data-dir "$workdir/single" >"$workdir/single.log" 2>&1 &
pids+=($!)
procs_of[node]=$!
for ((i = 0; i < 600; i++)); do
    [[ -n $(reported_port "$workdir/single.log" friends) ]] && break
    sleep 0.05
done
port_of[node]=$(reported_port "$workdir/single.log" friends)

port_of[redis]=$(free_port)
mkdir -p "$workdir/redis"
redis-server --port "${port_of[redis]}" --bind 127.0.0.1 --dir "$workdir/redis" --appendonly yes \
    --appendfsync everysec --save '' >"$workdir/redis.log" 2>&1 &
pids+=($!)
procs_of[redis]=$!
port_of[rsets]=${port_of[redis]}
procs_of[rsets]=${procs_of[redis]}
sleep 0.5

names=(proxy node redis rsets)
bench() {
    local name=$1
    shift
    local protocol=memcache extra=()
    [[ $name == redis || $name == rsets ]] && protocol=redis
    [[ $name == rsets ]] && extra=(--redis-friend-sets)
    timeout 3600 "$KOSHKA_BIN" bench --workload friends --protocol "$protocol" \
        --server "127.0.0.1:${port_of[$name]}" --users "$USERS" --edges "$EDGES" \
        --big-degree "$BIG_DEGREE" --distribution zipf --threads 2 --json "${extra[@]}" "$@"
}
cpu_ticks() {
    local total=0 pid
    for pid in $1; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
}
# `rsets` preloads the Redis server once for both Redis targets (sorted and plain sets).
for name in proxy node rsets; do
    echo "== preloading $name (127.0.0.1:${port_of[$name]})" >&2
    bench "$name" --connections 8 --preload-only >"$workdir/preload-$name.json"
done

results="$workdir/results.tsv"
: >"$results"
for ((pair = 1; pair <= PAIRS; pair++)); do
    for conns in $CONNECTIONS; do
        for ((i = 0; i < ${#names[@]}; i++)); do
            name=${names[$(((i + pair - 1) % ${#names[@]}))]}
            before=$(cpu_ticks "${procs_of[$name]}")
            started=$(date +%s.%N)
            out="$workdir/run.json"
            if ! bench "$name" --mix common1k --connections "$conns" --pipeline 1 \
                --duration "$DURATION" --warmup 1 --seed "$pair" >"$out" 2>"$out.err"; then
                echo "round $pair $name C=$conns: FAILED" >&2
                cat "$out.err" >&2
                continue
            fi
            util=$(awk -v a="$(cpu_ticks "${procs_of[$name]}")" -v b="$before" -v hz="$hz" \
                -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.3f", (a - b) / hz / (e - s)}')
            python3 - "$out" "$name" "$conns" "$util" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
print("\t".join([sys.argv[2], sys.argv[3], str(r["ops_per_sec"]), str(l["p50"]), str(l["p99"]),
                 str(r["errors"]), sys.argv[4]]))
PY
            tail -1 "$results" >&2
        done
    done
done

echo
echo "## Common friends across $SHARDS shards through koshka proxy vs Redis $(redis-server --version | grep -Eo 'v=[0-9.]+' | cut -c3-)"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS rounds x ${DURATION}s," \
    "$USERS users, $EDGES edges, pairs of $BIG_DEGREE-friend users, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
conns_seen = []
for line in open(sys.argv[1]):
    name, conns, ops, p50, p99, errors, util = line.split("\t")
    if conns not in conns_seen:
        conns_seen.append(conns)
    rows[(name, conns)].append((float(ops), float(p50), float(p99), int(errors), float(util)))
med = lambda xs: statistics.median(xs) if xs else 0.0
print("| conns | target | answers/s | p50 / p99 µs | CPU (cores) | per CPU-s | proxy / this | proxy / this per CPU-s |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
targets = ("proxy", "node", "redis", "rsets")
labels = {"proxy": "proxy + shards", "node": "one node", "redis": "Redis ZINTER", "rsets": "Redis SINTER"}
for conns in conns_seen:
    ops = {n: med([r[0] for r in rows[(n, conns)]]) for n in targets}
    per = {n: med([r[0] / r[4] for r in rows[(n, conns)] if r[4] > 0]) for n in targets}
    for n in targets:
        rs = rows[(n, conns)]
        if not rs:
            continue
        ratio = f"**{ops['proxy'] / ops[n]:.2f}×**" if n in ("redis", "rsets") and ops[n] else ""
        ratio_cpu = f"{per['proxy'] / per[n]:.2f}×" if n in ("redis", "rsets") and per[n] else ""
        print(f"| {conns} | {labels[n]} | {ops[n]:,.0f} | {med([r[1] for r in rs]):,.0f} / {med([r[2] for r in rs]):,.0f} | "
              f"{med([r[4] for r in rs]):.2f} | {per[n]:,.0f} | {ratio} | {ratio_cpu} |")
PY
