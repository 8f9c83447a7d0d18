#!/usr/bin/env bash
# Side-by-side social benchmark: koshka's friends engine (compiled keys) vs the same workload
# modelled the idiomatic Redis 7 way, on this machine, in one run. The messages engine has its
# own script, scripts/bench-messages.sh (a plain Redis model and one with a search index);
# WORKLOADS=messages here still runs the older 1 M-message Zipf data set against the plain
# Redis model (mix only).
#
#   scripts/bench-social.sh                         # 5 alternating pairs per scenario, 10 s runs
#   PAIRS=10 DURATION=10 scripts/bench-social.sh
#   WORKLOADS=friends MESSAGES=200000 scripts/bench-social.sh
#   WORKLOADS=lists PAIRS=3 scripts/bench-social.sh   # lists engine vs Redis sets
#
# Environment:
#   PAIRS=5              alternating (koshka, redis) pairs per scenario; medians are reported
#   DURATION=10          seconds per run (koshka bench adds a 1 s warm-up)
#   CONNECTIONS=64       connections of the throughput ("mix") runs, pipeline 1 each
#   WORKLOADS=friends    (or messages, lists)
#   LISTS=1000           lists workload: number of lists ($EDGES memberships in all)
#   USERS=100000 MESSAGES=1000000 BIG_MAILBOX=10000 TEXT_SIZE=100 EDGES=1000000
#   KOSHKA_BIN=${CARGO_TARGET_DIR:-target}/release/koshka (built unless KOSHKA_BIN is given)
#   KOSHKA_ARGS=""       extra flags for `koshka serve`
#   BASELINE_BIN=""      a second koshka binary (e.g. an older commit), raced as "base" with the
#                        same flags and data; the load generator is always $KOSHKA_BIN bench
#   REDIS_SERVER=redis-server
#
# Servers, fresh per workload (free loopback ports, temp dirs, stopped by PID):
#   koshka serve --listen 127.0.0.1:0 --port <engine>=PORT --data-dir TMP --threads 2 \
#       --durability everysec --engines <messages|friends> $KOSHKA_ARGS
#   redis-server --port PORT --bind 127.0.0.1 --dir TMP --appendonly yes \
#       --appendfsync everysec --save ''
# Memory: VmRSS (/proc/PID/status) of each fresh server before and after the preload
#   koshka bench --workload W --protocol memcache|redis --server 127.0.0.1:PORT \
#       --users $USERS --messages $MESSAGES --big-mailbox $BIG_MAILBOX --edges $EDGES \
#       --distribution zipf --connections 8 --preload-only --json
#   divided by the messages (or distinct friendship edges) loaded.
# Then, on the same servers, per scenario and pair (order alternates between pairs):
#   koshka bench --workload W --protocol P --server ... (same data flags) --distribution zipf \
#       --connections C --pipeline 1 --threads 2 --duration $DURATION --warmup 1 --seed PAIR \
#       [--mix M] --json
#   messages: mix (C=$CONNECTIONS, default mix)
#   friends:  mix (C=$CONNECTIONS, default mix), common1k (C=1, --mix common1k),
#             privacy20 (C=1, --mix privacy)
#   lists:    mix (C=$CONNECTIONS, check=60,add=20,intersect=20), intersect100 (C=1,
#             --mix intersect)
# 1-connection latencies include the loopback round trip: an upper bound on server time.
# CPU: utime + stime of each server process (/proc/PID/stat) over each measured run, so the
# tables also give operations per second of server CPU ("per CPU-s"): Redis runs its commands
# on one thread, koshka on two, so throughput alone compares different amounts of CPU.
# No taskset: client and servers share both cores. Noise on these 2-core VMs is about ±15 %.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WORKLOADS=${WORKLOADS:-friends}
USERS=${USERS:-100000}
MESSAGES=${MESSAGES:-1000000}
BIG_MAILBOX=${BIG_MAILBOX:-10000}
TEXT_SIZE=${TEXT_SIZE:-100}
EDGES=${EDGES:-1000000}
LISTS=${LISTS:-1000}
KOSHKA_ARGS=${KOSHKA_ARGS:-}
BASELINE_BIN=${BASELINE_BIN:-}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
default_bin="${CARGO_TARGET_DIR:-target}/release/koshka"

for tool in "$REDIS_SERVER" python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install redis-server python3)" >&2; exit 1; }
done
redis_version=$("$REDIS_SERVER" --version | grep -Eo 'v=[0-9.]+' | cut -c3-)
[[ $redis_version == 7.* ]] || echo "WARNING: redis-server $redis_version is not 7.x" >&2

if [[ -z ${KOSHKA_BIN:-} ]]; then
    KOSHKA_BIN=$default_bin
    echo "== cargo build --release -p koshka" >&2
    cargo build --release -p koshka >&2
fi
[[ -x $KOSHKA_BIN ]] || { echo "no koshka binary at $KOSHKA_BIN" >&2; exit 1; }
kinds=(koshka redis)
if [[ -n $BASELINE_BIN ]]; then
    [[ -x $BASELINE_BIN ]] || { echo "no baseline binary at $BASELINE_BIN" >&2; exit 1; }
    kinds=(koshka base redis)
fi
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

workdir=$(mktemp -d /tmp/koshka-bench-social.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

# start_server KIND WORKLOAD: starts a fresh server, prints "PID PORT".
start_server() {
    local kind=$1 workload=$2 port pid dir
    port=$(free_port)
    dir="$workdir/$kind-$workload-$port"
    mkdir -p "$dir"
    if [[ $kind == redis ]]; then
        "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
            --appendfsync everysec --save '' --daemonize no >"$dir.log" 2>&1 &
    else
        local bin=$KOSHKA_BIN
        [[ $kind == base ]] && bin=$BASELINE_BIN
        local listen=(--listen "127.0.0.1:0" --port "$workload=$port")
        # Binaries older than `--port` put the one engine they host on the --listen port.
        "$bin" serve --help 2>&1 | grep -q -- '--port' || listen=(--listen "127.0.0.1:$port")
        # shellcheck disable=SC2086
        "$bin" serve "${listen[@]}" --data-dir "$dir" \
            --threads 2 --durability everysec --engines "$workload" $KOSHKA_ARGS >"$dir.log" 2>&1 &
    fi
    pid=$!
    if [[ $kind == redis ]]; then
        local deadline=$((SECONDS + 30))
        until timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "PING\r\n" >&3 &&
            IFS= read -r -t 1 line <&3 && [[ $line == +PONG* ]]' _ "$port" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)) ||
                { cat "$dir.log" >&2; stop_pid "$pid"; return 1; }
            sleep 0.05
        done
    else
        wait_version "$port" "$pid" 60 >&2 || { cat "$dir.log" >&2; stop_pid "$pid"; return 1; }
    fi
    echo "$pid $port"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# bench KIND WORKLOAD PORT ARGS...: runs koshka bench, JSON to stdout.
bench() {
    local kind=$1 workload=$2 port=$3
    shift 3
    local protocol=memcache
    [[ $kind == redis ]] && protocol=redis
    timeout 1800 "$KOSHKA_BIN" bench --workload "$workload" --protocol "$protocol" \
        --server "127.0.0.1:$port" --users "$USERS" --messages "$MESSAGES" \
        --big-mailbox "$BIG_MAILBOX" --text-size "$TEXT_SIZE" --edges "$EDGES" \
        --lists "$LISTS" --distribution zipf --threads 2 --json "$@"
}

results="$workdir/results.tsv"
memory="$workdir/memory.tsv"
: >"$results"
: >"$memory"
for workload in $WORKLOADS; do
    declare -A pid_of=() port_of=()
    for kind in "${kinds[@]}"; do
        read -r pid port < <(start_server "$kind" "$workload") || true
        [[ -n ${pid:-} && -n ${port:-} ]] || { echo "cannot start $kind" >&2; exit 1; }
        pids+=("$pid") # start_server runs in a subshell: remember the PID here for cleanup
        pid_of[$kind]=$pid
        port_of[$kind]=$port
        base=$(rss_kb "$pid")
        echo "== $workload: preloading $kind (pid $pid, port $port, empty VmRSS $base kB)" >&2
        bench "$kind" "$workload" "$port" --connections 8 --preload-only >"$workdir/preload-$kind.json"
        after=$(rss_kb "$pid")
        python3 - "$workdir/preload-$kind.json" "$workload" "$kind" "$base" "$after" >>"$memory" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
social = report["social"]
print("\t".join([sys.argv[2], sys.argv[3], str(social["data_items"]), social["data_kind"],
                 sys.argv[4], sys.argv[5], f'{report["preload_s"]:.1f}', social["detail"]]))
PY
        tail -1 "$memory" >&2
    done
    case $workload in
    messages) scenarios=("mix $CONNECTIONS -") ;;
    friends) scenarios=("mix $CONNECTIONS -" "common1k 1 common1k" "privacy20 1 privacy") ;;
    lists) scenarios=("mix $CONNECTIONS -" "intersect100 1 intersect") ;;
    *) echo "unknown workload $workload" >&2; exit 1 ;;
    esac
    for ((pair = 1; pair <= PAIRS; pair++)); do
        for scenario in "${scenarios[@]}"; do
            read -r name connections mix <<<"$scenario"
            # Rotate the order each pair: every server goes first equally often.
            order=()
            for ((i = 0; i < ${#kinds[@]}; i++)); do
                order+=("${kinds[$(((i + pair - 1) % ${#kinds[@]}))]}")
            done
            for kind in "${order[@]}"; do
                extra=()
                [[ $mix != - ]] && extra=(--mix "$mix")
                out="$workdir/run-$workload-$name-$kind-$pair.json"
                before=$(cpu_ticks "${pid_of[$kind]}")
                started=$(date +%s.%N)
                if bench "$kind" "$workload" "${port_of[$kind]}" --connections "$connections" \
                    --pipeline 1 --duration "$DURATION" --warmup 1 --seed "$pair" \
                    "${extra[@]}" >"$out" 2>"$out.err"; then
                    # Server CPU share over the run (its 1 s warm-up included).
                    util=$(awk -v a="$(cpu_ticks "${pid_of[$kind]}")" -v b="$before" -v hz="$hz" \
                        -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.3f", (a - b) / hz / (e - s)}')
                    python3 - "$out" "$workload" "$name" "$kind" "$util" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
kinds = {k["name"]: k for k in r["social"]["ops_by_kind"]}
print("\t".join(sys.argv[2:5] + [str(r["ops_per_sec"]), str(l["p50"]), str(l["p99"]),
                 str(l["p999"]), str(r["errors"]), json.dumps(kinds), sys.argv[5]]))
PY
                    tail -1 "$results" | cut -f1-8,10 >&2
                else
                    echo "run failed: $workload $name $kind pair $pair" >&2
                    cat "$out.err" >&2
                fi
            done
        done
    done
    for kind in "${kinds[@]}"; do
        stop_pid "${pid_of[$kind]}"
    done
    unset pid_of port_of
done

echo
echo "## koshka vs Redis $redis_version, social workloads ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS alternating pairs x ${DURATION}s," \
    "koshka --durability everysec, redis appendonly everysec; $USERS users, zipf activity;" \
    "KOSHKA_ARGS='$KOSHKA_ARGS' BASELINE_BIN='$BASELINE_BIN'"
echo
python3 - "$results" "$memory" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    workload, name, kind, ops, p50, p99, p999, errors, kinds, util = line.rstrip("\n").split("\t")
    if (workload, name) not in order:
        order.append((workload, name))
    runs[(workload, name, kind)].append(
        dict(ops=float(ops), p50=float(p50), p99=float(p99), p999=float(p999),
             errors=int(errors), kinds=json.loads(kinds), util=float(util),
             per_cpu=float(ops) / float(util) if float(util) > 0 else 0.0))
med = lambda rows, key: statistics.median(r[key] for r in rows) if rows else None
f0 = lambda v: f"{v:,.0f}" if v is not None else "n/a"
f1 = lambda v: f"{v:,.0f}" if v is not None and v >= 100 else (f"{v:.1f}" if v is not None else "n/a")
print("Throughput = logical operations/s (one operation = all its round trips); latency of the")
print("whole operation in µs, medians over the pairs.")
print()
print("| workload | scenario | conns | koshka ops/s | Redis ops/s | koshka/Redis | koshka p50 / p99 / p99.9 | Redis p50 / p99 / p99.9 | errors k/R |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for workload, name in order:
    k = runs.get((workload, name, "koshka"), [])
    r = runs.get((workload, name, "redis"), [])
    ko, ro = med(k, "ops"), med(r, "ops")
    ratio = f"{ko / ro:.2f}x" if ko and ro else "n/a"
    lat = lambda rows: " / ".join(f1(med(rows, q)) for q in ("p50", "p99", "p999")) if rows else "n/a"
    conns = "1" if name != "mix" else "many"
    errs = f"{sum(x['errors'] for x in k)}/{sum(x['errors'] for x in r)}"
    print(f"| {workload} | {name} | {conns} | {f0(ko)} | {f0(ro)} | {ratio} | {lat(k)} | {lat(r)} | {errs} |")
print()
print("Server CPU: cores the server process used during the run (user + system); per CPU-s =")
print("operations per second of server CPU (median over the pairs). Redis executes commands on")
print("one thread; koshka runs two workers. 'base' is BASELINE_BIN, when given.")
print()
print("| workload | scenario | koshka CPU | koshka per CPU-s | base ops/s | base per CPU-s | koshka/base | Redis CPU | Redis per CPU-s | koshka/Redis per CPU-s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for workload, name in order:
    k = runs.get((workload, name, "koshka"), [])
    b = runs.get((workload, name, "base"), [])
    r = runs.get((workload, name, "redis"), [])
    kc, bc, rc = med(k, "per_cpu"), med(b, "per_cpu"), med(r, "per_cpu")
    ku, ru = med(k, "util"), med(r, "util")
    fu = lambda v: f"{v:.2f}" if v is not None else "n/a"
    kb = f"{med(k, 'ops') / med(b, 'ops'):.2f}x" if k and b else "n/a"
    kr = f"{kc / rc:.2f}x" if kc and rc else "n/a"
    print(f"| {workload} | {name} | {fu(ku)} | {f0(kc)} | {f0(med(b, 'ops'))} | {f0(bc)} | {kb} | {fu(ru)} | {f0(rc)} | {kr} |")
print()
for workload, name in order:
    if name != "mix":
        continue
    k = runs.get((workload, name, "koshka"), [])
    r = runs.get((workload, name, "redis"), [])
    names = []
    for row in k + r:
        for op in row["kinds"]:
            if op not in names:
                names.append(op)
    print(f"{workload} mix, per operation (medians):")
    print()
    print("| operation | koshka ops/s | Redis ops/s | koshka p50 / p99 µs | Redis p50 / p99 µs |")
    print("|---|---:|---:|---:|---:|")
    for op in names:
        def stat(rows, key):
            vals = [row["kinds"][op][key] if key == "ops_per_sec" else row["kinds"][op]["latency_us"][key]
                    for row in rows if op in row["kinds"]]
            return statistics.median(vals) if vals else None
        print(f"| {op} | {f0(stat(k, 'ops_per_sec'))} | {f0(stat(r, 'ops_per_sec'))} | "
              f"{f1(stat(k, 'p50'))} / {f1(stat(k, 'p99'))} | {f1(stat(r, 'p50'))} / {f1(stat(r, 'p99'))} |")
    print()
mem = defaultdict(dict)
for line in open(sys.argv[2]):
    workload, kind, items, unit, base, after, preload_s, detail = line.rstrip("\n").split("\t")
    mem[workload][kind] = (int(items), unit, int(base), int(after), float(preload_s), detail)
if mem:
    print("| workload | data | koshka VmRSS growth | koshka B/item | Redis VmRSS growth | Redis B/item | koshka/Redis | preload s (k / R) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for workload, kinds in mem.items():
        cells = {}
        for kind, (items, unit, base, after, preload_s, detail) in kinds.items():
            cells[kind] = ((after - base) * 1024, items, unit, preload_s)
        k, r = cells.get("koshka"), cells.get("redis")
        any_cell = k or r
        per = lambda c: c[0] / c[1] if c and c[1] else None
        ratio = f"{per(k) / per(r):.2f}x" if per(k) and per(r) else "n/a"
        mib = lambda c: f"{c[0] / 2**20:,.1f} MiB" if c else "n/a"
        pre = " / ".join(f"{c[3]:.0f}" if c else "n/a" for c in (k, r))
        print(f"| {workload} | {any_cell[1]:,} {any_cell[2]} | {mib(k)} | {f0(per(k))} | {mib(r)} | {f0(per(r))} | {ratio} | {pre} |")
    print()
    for workload, kinds in mem.items():
        detail = next(iter(kinds.values()))[5]
        print(f"{workload} data: {detail}")
PY
