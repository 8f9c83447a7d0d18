#!/usr/bin/env bash
# Proxy benchmark: koshka proxy vs twemproxy (nutcracker) in the same topology, plus a
# direct row, on this machine, in one run. A benchmark, not a test: it asserts nothing.
#
#   scripts/bench-proxy.sh                    # 5 alternating rounds per scenario, 5 s runs
#   PAIRS=10 DURATION=10 scripts/bench-proxy.sh
#   PAIRS=1 DURATION=2 scripts/bench-proxy.sh # smoke run
#
# Environment:
#   PAIRS=5            rounds per scenario; each round runs every target once, the order
#                      rotating from round to round; medians are reported
#   DURATION=5         measured seconds per run (koshka bench adds a 1 s warm-up)
#   BACKENDS=8         memcached backends behind each proxy
#   PROXY_THREADS=1    koshka proxy worker threads (twemproxy is single-threaded)
#   CONNECTIONS=64     client connections of the load generator
#   BACKEND_CONNECTIONS=1  persistent connections from each proxy to each backend
#   KOSHKA_BIN=target/release/koshka (built if it is the default and out of date)
#
# Servers (free loopback ports, stopped by PID; the backends are shared by both proxies, so
# both place keys on the same ring and only the proxy differs):
#   memcached -l 127.0.0.1 -p PORT -U 0 -t 1 -m 256 [-u root]          x BACKENDS
#   memcached -l 127.0.0.1 -p PORT -U 0 -t 1 -m 1024 [-u root]         the "direct" target:
#                                                                        one server, every key
#   nutcracker -c twemproxy.yml -s STATS_PORT -a 127.0.0.1 -o LOG -p PIDFILE
#       twemproxy.yml: listen 127.0.0.1:PORT, hash md5, distribution ketama, timeout 2000,
#       preconnect true, server_connections $BACKEND_CONNECTIONS, servers 127.0.0.1:PORT:1 (one per backend)
#   koshka proxy --config proxy.toml --threads $PROXY_THREADS
#       proxy.toml: one kv cluster (ketama, md5: libmemcached/twemproxy placement),
#       get_timeout_ms 2000, set_timeout_ms 2000, connections_per_backend $BACKEND_CONNECTIONS, the backends
# Load (koshka bench, the same command against each target in turn):
#   koshka bench --server 127.0.0.1:PORT --connections $CONNECTIONS --threads 2 \
#       --keys 100000 --key-size 32 --value-size 100 --get-ratio R --multiget M \
#       --duration $DURATION --warmup 1 --preload --json
#   Scenarios: get90 = single-key 90/10 get/set (R 0.9, M 1); mget100 = 100-key multi-gets
#   only (R 1, M 100), whose p99 is compared with the direct server's.
# CPU: utime + stime of the target process (the proxy, or the direct memcached) from
# /proc/PID/stat, averaged over the whole run (koshka bench's preload and warm-up included):
# 'per CPU-s' is requests per second per core of that process. Backend CPU is not counted
# (the same backends serve both proxies).
# The load generator, the proxy and 8 backends share this machine's cores: the numbers
# compare the proxies with each other under identical conditions, not with a dedicated
# proxy host. Noise on small shared VMs is about ±15 %: use PAIRS >= 10 for numbers you
# quote.
#
# Progress goes to stderr, the markdown table of medians and ratios to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-5}
BACKENDS=${BACKENDS:-8}
PROXY_THREADS=${PROXY_THREADS:-1}
CONNECTIONS=${CONNECTIONS:-64}
KOSHKA_BIN=${KOSHKA_BIN:-target/release/koshka}
# Retrieval and write deadlines of both proxies: far above any latency of a healthy run, so a
# slow moment on a busy machine is a slow answer, not a partial one.
PROXY_TIMEOUT_MS=2000
# Persistent connections from each proxy to each backend (twemproxy's default
# server_connections is 1; more split each tick's requests over more, smaller writes).
BACKEND_CONNECTIONS=${BACKEND_CONNECTIONS:-1}

for tool in memcached python3; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: run scripts/test.sh once to install" >&2
        exit 1
    }
done
if ! command -v nutcracker >/dev/null; then
    echo "== installing twemproxy (Debian package nutcracker)" >&2
    sudo=""
    if ((EUID != 0)); then sudo="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nutcracker >&2 ||
        echo "NOTE: could not install nutcracker: twemproxy rows skipped" >&2
fi
have_twemproxy=0
command -v nutcracker >/dev/null && have_twemproxy=1

if [[ $KOSHKA_BIN == target/release/koshka ]]; then
    echo "== building $KOSHKA_BIN" >&2
    cargo build --release -p koshka --bin koshka >&2
fi

workdir=$(mktemp -d /tmp/koshka-bench-proxy.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

user_args=()
if ((EUID == 0)); then user_args=(-u root); fi

# start_memcached NAME MEMORY_MB: prints "PID PORT".
start_memcached() {
    local name=$1 memory=$2 port pid
    port=$(free_port)
    memcached -l 127.0.0.1 -p "$port" -U 0 -t 1 -m "$memory" "${user_args[@]}" \
        >"$workdir/$name.log" 2>&1 &
    pid=$!
    wait_version "$port" "$pid" 30 >&2 || { cat "$workdir/$name.log" >&2; return 1; }
    echo "$pid $port"
}

backend_ports=()
backend_pids=()
for ((i = 0; i < BACKENDS; i++)); do
    read -r pid port < <(start_memcached "backend$i" 256)
    pids+=("$pid")
    backend_pids+=("$pid")
    backend_ports+=("$port")
done
echo "== $BACKENDS memcached backends on ports ${backend_ports[*]}" >&2

declare -A pid_of=() port_of=()
names=()

read -r pid port < <(start_memcached direct 1024)
pids+=("$pid")
pid_of[direct]=$pid
port_of[direct]=$port

port=$(free_port)
{
    echo "[proxy]"
    echo "threads = $PROXY_THREADS"
    echo "get_timeout_ms = $PROXY_TIMEOUT_MS"
    echo "set_timeout_ms = $PROXY_TIMEOUT_MS"
    echo "connections_per_backend = $BACKEND_CONNECTIONS"
    echo
    echo "[[cluster]]"
    echo 'name = "kv"'
    echo 'engine = "kv"'
    echo "listen = \"127.0.0.1:$port\""
    echo "shards = ["
    for backend in "${backend_ports[@]}"; do echo "    \"127.0.0.1:$backend\","; done
    echo "]"
} >"$workdir/proxy.toml"
"$KOSHKA_BIN" proxy --config "$workdir/proxy.toml" --threads "$PROXY_THREADS" \
    >"$workdir/koshka-proxy.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_version "$port" "$pid" 30 >&2 || { cat "$workdir/koshka-proxy.log" >&2; exit 1; }
pid_of[koshka-proxy]=$pid
port_of[koshka-proxy]=$port
names+=(koshka-proxy)

if ((have_twemproxy)); then
    port=$(free_port)
    {
        echo "bench:"
        echo "  listen: 127.0.0.1:$port"
        echo "  hash: md5"
        echo "  distribution: ketama"
        echo "  timeout: $PROXY_TIMEOUT_MS"
        echo "  preconnect: true"
        echo "  auto_eject_hosts: false"
        echo "  server_connections: $BACKEND_CONNECTIONS"
        echo "  servers:"
        for backend in "${backend_ports[@]}"; do echo "   - 127.0.0.1:$backend:1"; done
    } >"$workdir/twemproxy.yml"
    nutcracker -c "$workdir/twemproxy.yml" -s "$(free_port)" -a 127.0.0.1 \
        -o "$workdir/twemproxy.log" -p "$workdir/twemproxy.pid" &
    pid=$!
    pids+=("$pid")
    wait_version "$port" "$pid" 30 >&2 || { cat "$workdir/twemproxy.log" >&2; exit 1; }
    pid_of[twemproxy]=$pid
    port_of[twemproxy]=$port
    names+=(twemproxy)
fi
names+=(direct)
for name in "${names[@]}"; do
    echo "== $name on 127.0.0.1:${port_of[$name]} (pid ${pid_of[$name]})" >&2
done

# cpu_ticks PID: user + system clock ticks the process has used so far.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# backend_ticks: the same, summed over the backends behind the proxies.
backend_ticks() {
    local total=0 pid
    for pid in "${backend_pids[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}

# run_bench PORT GET_RATIO MULTIGET: prints "ops/s keys/s p50_us p99_us errors" from
# koshka bench --json, or nothing if the run failed.
run_bench() {
    local port=$1 ratio=$2 multiget=$3
    /usr/bin/time -o "$workdir/time.txt" -f "%U %S" \
        timeout $((DURATION + 120)) "$KOSHKA_BIN" bench --server "127.0.0.1:$port" \
        --connections "$CONNECTIONS" --threads 2 --keys 100000 --key-size 32 --value-size 100 \
        --get-ratio "$ratio" --multiget "$multiget" --duration "$DURATION" --warmup 1 \
        --preload --json >"$workdir/bench.json" 2>"$workdir/bench.err" || true
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
print(round(r["ops_per_sec"]), round(r["keys_per_sec"]), round(l["p50"]), round(l["p99"]),
      r["errors"] + r["get_misses"])' "$workdir/bench.json" 2>/dev/null ||
        { cat "$workdir/bench.err" >&2; echo ""; }
}

# Scenarios: name get_ratio multiget
scenarios=("get90 0.9 1" "mget100 1 100")
results="$workdir/results.tsv"
: >"$results"
hz=$(getconf CLK_TCK)
for ((pair = 1; pair <= PAIRS; pair++)); do
    for scenario in "${scenarios[@]}"; do
        read -r scenario_name ratio multiget <<<"$scenario"
        n=${#names[@]}
        for ((i = 0; i < n; i++)); do
            name=${names[$(((i + pair - 1) % n))]}
            before=$(cpu_ticks "${pid_of[$name]}")
            backends_before=$(backend_ticks)
            started=$(date +%s.%N)
            line=$(run_bench "${port_of[$name]}" "$ratio" "$multiget")
            after=$(cpu_ticks "${pid_of[$name]}")
            ended=$(date +%s.%N)
            util=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v s="$started" \
                -v e="$ended" 'BEGIN {printf "%.3f", (a - b) / hz / (e - s)}')
            backends_util=$(awk -v a="$(backend_ticks)" -v b="$backends_before" -v hz="$hz" \
                -v s="$started" -v e="$ended" 'BEGIN {printf "%.3f", (a - b) / hz / (e - s)}')
            gen_util=$(awk -v s="$started" -v e="$ended" '{printf "%.3f", ($1 + $2) / (e - s)}' \
                "$workdir/time.txt" 2>/dev/null || echo 0)
            if [[ -z $line ]]; then
                echo "round $pair $scenario_name $name: FAILED" >&2
                continue
            fi
            read -r ops keys p50 p99 bad <<<"$line"
            echo "round $pair $scenario_name $name: $ops req/s ($keys keys/s), p50 $p50 us," \
                "p99 $p99 us, $bad errors+misses, cpu $util cores (load generator $gen_util," \
                "backends $backends_util)" >&2
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario_name" "$name" "$ops" \
                "$keys" "$p50" "$p99" "$bad" "$util" "$gen_util" "$backends_util" >>"$results"
        done
    done
done

echo
echo "## koshka proxy vs twemproxy ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)," \
    "$(nutcracker --version 2>&1 | head -1 || true), $(memcached -V)," \
    "$BACKENDS memcached backends (-t 1), koshka proxy --threads $PROXY_THREADS;" \
    "$PAIRS rounds x ${DURATION}s, $CONNECTIONS connections, 32 B keys, 100 B values"
echo
python3 - "$results" "${names[@]}" <<'PY'
import statistics, sys
from collections import defaultdict
names = sys.argv[2:]
rows = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    scenario, target, ops, keys, p50, p99, bad, cpu, gen, backends = line.split()
    if scenario not in order:
        order.append(scenario)
    rows[(scenario, target)].append((int(ops), int(keys), int(p50), int(p99), int(bad),
                                     float(cpu), float(gen), float(backends)))
med = statistics.median
print("req/s: requests per second (a 100-key multi-get is one request); keys/s: keys read or")
print("written per second; medians (min-max) over the rounds. 'vs twemproxy': koshka proxy's")
print("median over twemproxy's (req/s: higher is better; p99: lower is better). 'p99 vs direct':")
print("the target's p99 over the direct server's. CPU: cores the target process used;")
print("'per CPU-s': req/s per core of that process. 'bad': error replies + misses (all keys")
print("are preloaded, so any miss is an answer the proxy lost). 'gen' and 'backends': cores the")
print("load generator and the memcached backends used in the same run (the machine has")
print(f"{__import__('os').cpu_count()}; what the proxy does not use, they do).")
print()
print("| scenario | target | req/s (median, min-max) | keys/s | vs twemproxy | p50 µs | p99 µs "
      "| p99 vs twemproxy | p99 vs direct | CPU | per CPU-s | gen / backends CPU | bad |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario in order:
    def stat(target, i):
        v = rows.get((scenario, target))
        return med([r[i] for r in v]) if v else None
    tw_ops, tw_p99 = stat("twemproxy", 0), stat("twemproxy", 3)
    direct_p99 = stat("direct", 3)
    for target in names:
        v = rows.get((scenario, target))
        if not v:
            continue
        ops = [r[0] for r in v]
        m_ops, m_keys, m_p50, m_p99 = (med([r[i] for r in v]) for i in range(4))
        bad = sum(r[4] for r in v)
        cpu = med([r[5] for r in v])
        gen, backends = med([r[6] for r in v]), med([r[7] for r in v])
        per = [r[0] / r[5] for r in v if r[5] > 0]
        per_cpu = f"{med(per):,.0f}" if per else "n/a"
        if target == "twemproxy":
            vs_ops = vs_p99 = "1"
        elif target == "koshka-proxy" and tw_ops:
            vs_ops = f"**{m_ops / tw_ops:.2f}×**"
            vs_p99 = f"**{m_p99 / tw_p99:.2f}×**" if tw_p99 else "n/a"
        else:
            vs_ops = vs_p99 = "–"
        vs_direct = f"{m_p99 / direct_p99:.2f}×" if direct_p99 else "n/a"
        print(f"| {scenario} | {target} | {m_ops:,.0f} ({min(ops):,}-{max(ops):,}) | {m_keys:,.0f} "
              f"| {vs_ops} | {m_p50:,.0f} | {m_p99:,.0f} | {vs_p99} | {vs_direct} | {cpu:.2f} "
              f"| {per_cpu} | {gen:.2f} / {backends:.2f} | {bad} |")
PY
