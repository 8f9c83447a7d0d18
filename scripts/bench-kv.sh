#!/usr/bin/env bash
# Side-by-side kv benchmark: koshka vs memcached 1.6, on this machine, in one run.
#
#   scripts/bench-kv.sh                       # 5 alternating pairs per scenario, 10 s runs
#   PAIRS=10 DURATION=10 scripts/bench-kv.sh
#   KOSHKA_ARGS="--durability everysec" scripts/bench-kv.sh
#   DURABILITIES="everysec none" BASELINE_BIN=/tmp/old/koshka scripts/bench-kv.sh
#
# Environment:
#   PAIRS=5            alternating (koshka, memcached) pairs per scenario; medians are reported
#   DURATION=10        seconds per run (koshka bench adds a 1 s warm-up)
#   KOSHKA_ARGS=""     extra flags for `koshka serve` (e.g. --durability none|everysec)
#   DURABILITIES=""    e.g. "everysec none": one koshka server per mode (koshka-everysec, …),
#                      each started with `--durability MODE $KOSHKA_ARGS`, all in the same run
#   BASELINE_BIN=""    a second koshka binary (e.g. an older commit) raced the same way as
#                      base[-MODE]; every run uses the same load generator ($KOSHKA_BIN bench)
#   SCENARIOS=""       only these scenario names (default all: get90-p1 get50-p1 get90-p16
#                      mget10-p1)
#   KOSHKA_BIN=target/release/koshka
#   KOSHKA_BENCH_CMD   load generator command (default "$KOSHKA_BIN bench")
#   RSS_ITEMS=1000000  items loaded for the memory measurement
#   SKIP_RSS=1         skip the memory measurement
#
# Servers (free loopback ports, stopped by PID):
#   memcached -l 127.0.0.1 -p PORT -U 0 -u root -t 2 -m 4096 -c 4096
#   koshka serve --listen 127.0.0.1:PORT --data-dir TMP --threads 2 --engines kv $KOSHKA_ARGS
# Load, per scenario, against each server in turn (the order rotates from pair to pair, so
# with two servers it alternates):
#   memcaslap -s 127.0.0.1:PORT -F CFG -c 64 -T 2 -t ${DURATION}s -X 100 [-d 10]
#       CFG: key 32 32 1 / value 100 100 1 / cmd 0 <set share> + 1 <get share>
#   koshka bench --server 127.0.0.1:PORT --connections 64 --threads 2 --keys 100000 \
#       --key-size 32 --value-size 100 --get-ratio R --pipeline P --multiget M \
#       --duration $DURATION --warmup 1 --preload --json
#   Scenarios: 90/10 and 50/50 get/set at pipeline 1 (both tools), 90/10 at pipeline 16
#   (koshka bench only: memcaslap cannot pipeline), 90/10 with 10-key multi-gets (both).
# CPU: utime + stime of each server process (/proc/PID/stat) over each run gives ops per
# server CPU-second, the work a server does per unit of CPU whatever its thread count.
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
DURABILITIES=${DURABILITIES:-}
BASELINE_BIN=${BASELINE_BIN:-}
SCENARIOS=${SCENARIOS:-}
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

# The servers raced: "name binary durability" ("-" = only $KOSHKA_ARGS), memcached last.
servers=()
if ((have_koshka)); then
    for durability in ${DURABILITIES:--}; do
        suffix=""
        [[ $durability != - ]] && suffix="-$durability"
        servers+=("koshka$suffix $KOSHKA_BIN $durability")
        [[ -n $BASELINE_BIN ]] && servers+=("base$suffix $BASELINE_BIN $durability")
    done
fi
servers+=("memcached - -")

# start_server NAME BIN DURABILITY: starts a fresh server, prints "PID PORT".
start_server() {
    local name=$1 bin=$2 durability=$3 port pid
    port=$(free_port)
    if [[ $name == memcached ]]; then
        # shellcheck disable=SC2046
        memcached $(memcached_args "$port") -t 2 -m 4096 -c 4096 >"$workdir/$name.log" 2>&1 &
    else
        local data="$workdir/data-$port" extra=()
        [[ $durability != - ]] && extra=(--durability "$durability")
        # shellcheck disable=SC2086
        "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 --engines kv \
            "${extra[@]}" $KOSHKA_ARGS >"$workdir/$name.log" 2>&1 &
    fi
    pid=$!
    wait_version "$port" "$pid" 60 >&2 || { cat "$workdir/$name.log" >&2; return 1; }
    echo "$pid $port"
}

# cpu_ticks PID: user + system clock ticks the process has used so far.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
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
all_scenarios=(
    "get90-p1 memcaslap 0.9 1 1"
    "get90-p1 bench 0.9 1 1"
    "get50-p1 memcaslap 0.5 1 1"
    "get50-p1 bench 0.5 1 1"
    "get90-p16 bench 0.9 16 1"
    "mget10-p1 memcaslap 0.9 1 10"
    "mget10-p1 bench 0.9 1 10"
)
scenarios=()
for scenario in "${all_scenarios[@]}"; do
    if [[ -z $SCENARIOS ]] || [[ " $SCENARIOS " == *" ${scenario%% *} "* ]]; then
        scenarios+=("$scenario")
    fi
done

results="$workdir/results.tsv"
: >"$results"
declare -A pid_of=() port_of=()
for server in "${servers[@]}"; do
    read -r name bin durability <<<"$server"
    read -r pid port < <(start_server "$name" "$bin" "$durability")
    pids+=("$pid")
    pid_of[$name]=$pid
    port_of[$name]=$port
done
names=()
for server in "${servers[@]}"; do names+=("${server%% *}"); done
hz=$(getconf CLK_TCK)

for ((pair = 1; pair <= PAIRS; pair++)); do
    for scenario in "${scenarios[@]}"; do
        read -r scenario_name tool ratio pipeline multiget <<<"$scenario"
        [[ $tool == bench ]] && ((have_bench == 0)) && continue
        # Rotate the order each pair: every server goes first equally often.
        n=${#names[@]}
        order=()
        for ((i = 0; i < n; i++)); do order+=("${names[$(((i + pair - 1) % n))]}"); done
        for name in "${order[@]}"; do
            port=${port_of[$name]}
            p99=-
            before=$(cpu_ticks "${pid_of[$name]}")
            started=$(date +%s.%N)
            if [[ $tool == memcaslap ]]; then
                ops=$(run_memcaslap "$port" "$ratio" "$multiget")
            else
                read -r ops p99 < <(run_bench "$port" "$ratio" "$pipeline" "$multiget") || true
            fi
            after=$(cpu_ticks "${pid_of[$name]}")
            # Server CPU share over the whole run (koshka bench's preload and warm-up included).
            util=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v s="$started" -v e="$(date +%s.%N)" \
                'BEGIN {printf "%.3f", (a - b) / hz / (e - s)}')
            echo "pair $pair $scenario_name $tool $name: ${ops:-FAILED} ops/s p99 ${p99:--} us, server cpu ${util} cores" >&2
            [[ -n $ops ]] && printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario_name" "$tool" "$name" "$ops" "${p99:--}" "$util" >>"$results"
        done
    done
done
for name in "${names[@]}"; do stop_pid "${pid_of[$name]}"; done

# rss_after_load NAME BIN DURABILITY: loads RSS_ITEMS items into a fresh server, prints
# "VmRSS_kB curr_items".
rss_after_load() {
    local pid port
    read -r pid port < <(start_server "$@")
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
    # The first koshka server (if any) and memcached.
    rss_servers=("${servers[0]}")
    ((${#servers[@]} > 1)) && rss_servers+=("${servers[-1]}")
    for server in "${rss_servers[@]}"; do
        read -r name bin durability <<<"$server"
        read -r rss items < <(rss_after_load "$name" "$bin" "$durability")
        rss_lines+=("$name $rss $items")
        echo "rss $name: ${rss} kB with $items items" >&2
    done
fi

echo
echo "## koshka vs memcached, kv ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS pairs x ${DURATION}s," \
    "64 connections, 32 B keys, 100 B values, KOSHKA_ARGS='$KOSHKA_ARGS'" \
    "DURABILITIES='$DURABILITIES' BASELINE_BIN='$BASELINE_BIN'"
echo
python3 - "$results" "${names[@]}" <<'PY'
import statistics, sys
from collections import defaultdict
names = sys.argv[2:]
runs = defaultdict(list)
p99s = defaultdict(list)
cpus = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    scenario, tool, server, ops, p99, cpu = line.split()
    if (scenario, tool) not in order:
        order.append((scenario, tool))
    runs[(scenario, tool, server)].append(int(ops))
    cpus[(scenario, tool, server)].append(float(cpu))
    if p99 != "-":
        p99s[(scenario, tool, server)].append(int(p99))
med = lambda v: statistics.median(v) if v else None
print("ops/s = requests/s, except mget10 rows: keys/s (memcaslap counts one op per key); medians")
print("(min-max) over the pairs; 'server CPU' = cores the server process used (user + system,")
print("averaged over the whole run incl. koshka bench's preload and warm-up); 'per CPU-s' = ops/s")
print("divided by that, i.e. operations per second of server CPU (median over the pairs).")
print()
print("| scenario | load generator | server | ops/s (median, min-max) | vs memcached | p99 µs | server CPU | per CPU-s |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for scenario, tool in order:
    mc = med(runs.get((scenario, tool, "memcached")))
    label = "memcaslap" if tool == "memcaslap" else "koshka bench"
    for server in names:
        v = runs.get((scenario, tool, server))
        if not v:
            continue
        m = med(v)
        ratio = f"**{m / mc:.2f}×**" if mc and server != "memcached" else ("1" if server == "memcached" else "n/a")
        p = med(p99s.get((scenario, tool, server)))
        utils = cpus[(scenario, tool, server)]
        per = [o / u for o, u in zip(v, utils) if u > 0]
        per_cpu = f"{med(per):,.0f}" if per else "n/a"
        lat = f"{p:,.0f}" if p else "–"
        print(f"| {scenario} | {label} | {server} | {m:,.0f} ({min(v):,}-{max(v):,}) | {ratio} | "
              f"{lat} | {med(utils):.2f} | {per_cpu} |")
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
