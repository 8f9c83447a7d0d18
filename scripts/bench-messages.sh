#!/usr/bin/env bash
# Side-by-side messages benchmark: koshka's messages engine vs Redis 7 modelled plainly (and,
# as a second row, with an application-side search index), on this machine, in one run.
#
#   scripts/bench-messages.sh                        # 5 alternating rounds, 10 s runs
#   PAIRS=7 DURATION=10 KOSHKA_BIN=/tmp/koshka scripts/bench-messages.sh
#   SYSTEMS="koshka redis-plain" SENDS=30000 PAIRS=1 DURATION=3 scripts/bench-messages.sh
#
# Environment:
#   PAIRS=5             alternating rounds per scenario (each round runs every system once,
#                       the order rotating); medians are reported
#   DURATION=10         seconds per run (koshka bench adds a 1 s warm-up)
#   SYSTEMS="koshka redis-plain redis-indexed"   (add koshka-baseline to compare two builds)
#   KOSHKA_BASELINE_BIN=   the koshka binary run as system koshka-baseline (same flags)
#   USERS=100000 SENDS=300000 TEXT_CAP=300      the data (see below)
#   SCENARIOS="mix8x16 mix64x1 send1x1"         NAME<connections>x<depth>: mix = the default
#                       mix, send = sends only (send latency at depth 1)
#   SEARCH=1            also run search10k (fresh koshka and redis-indexed, a 10 000-message
#                       mailbox, 1 connection, pipeline 1)
#   KOSHKA_BIN=${CARGO_TARGET_DIR:-target}/release/koshka (built unless KOSHKA_BIN is given)
#   KOSHKA_ARGS=""      extra flags for `koshka serve`
#   REDIS_SERVER=redis-server
#
# Data: SENDS sends between USERS users drawn uniformly (2 x SENDS message copies); each text
# one whole Russian fortune (Debian fortunes-ru: separators stripped, tabs as spaces, capped
# at TEXT_CAP bytes; mean 157 B at 300), the same texts in the same order into every system.
#
# Servers, fresh, free loopback ports, temp dirs, stopped by PID:
#   koshka serve --listen 127.0.0.1:0 --port messages=PORT --data-dir TMP --threads 2 \
#       --durability everysec --engines messages $KOSHKA_ARGS
#   redis-server --port PORT --bind 127.0.0.1 --dir TMP --appendonly yes \
#       --appendfsync everysec --save ''            (otherwise default settings)
# Memory: VmRSS (/proc/PID/status) of each fresh server before and after the preload
#   koshka bench --workload messages --protocol memcache|redis --redis-model plain|indexed \
#       --server 127.0.0.1:PORT --users $USERS --messages $SENDS --big-mailbox 0 \
#       --dialog-peers 0 --texts ru --text-size $TEXT_CAP --distribution uniform \
#       --threads 2 --connections 8 --preload-only --json
#   divided by the message copies; plus koshka's `stats` breakdown and Redis's used_memory.
# Throughput, on the same loaded servers, per scenario and round (order rotating):
#   koshka bench ... (same data flags) --connections C --pipeline D --duration $DURATION \
#       --warmup 1 --seed ROUND --server-pid PID --json
#   default mix send=10,dialogs=35,conversation=35,unread=20 (send1x1: --mix send); the
#   server's CPU seconds over the measured window come from /proc/PID/stat (--server-pid).
# No taskset: client and servers share both cores; alternate and use medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-10}
SYSTEMS=${SYSTEMS:-koshka redis-plain redis-indexed}
USERS=${USERS:-100000}
SENDS=${SENDS:-300000}
TEXT_CAP=${TEXT_CAP:-300}
SCENARIOS=${SCENARIOS:-mix8x16 mix64x1 send1x1}
SEARCH=${SEARCH:-1}
KOSHKA_ARGS=${KOSHKA_ARGS:-}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
default_bin="${CARGO_TARGET_DIR:-target}/release/koshka"

for tool in "$REDIS_SERVER" python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install redis-server python3)" >&2; exit 1; }
done
[[ -d /usr/share/games/fortunes/ru ]] ||
    { echo "missing fortunes-ru (apt-get install fortunes-ru; scripts/test.sh installs it)" >&2; exit 1; }
redis_version=$("$REDIS_SERVER" --version | grep -Eo 'v=[0-9.]+' | cut -c3-)
[[ $redis_version == 7.* ]] || echo "WARNING: redis-server $redis_version is not 7.x" >&2

if [[ -z ${KOSHKA_BIN:-} ]]; then
    KOSHKA_BIN=$default_bin
    echo "== cargo build --release -p koshka" >&2
    cargo build --release -p koshka >&2
fi
[[ -x $KOSHKA_BIN ]] || { echo "no koshka binary at $KOSHKA_BIN" >&2; exit 1; }

workdir=$(mktemp -d /tmp/koshka-bench-messages.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

# start_server SYSTEM: starts a fresh server, prints "PID PORT".
start_server() {
    local system=$1 port pid dir
    port=$(free_port)
    dir="$workdir/$system-$port"
    mkdir -p "$dir"
    if [[ $system == redis-* ]]; then
        "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
            --appendfsync everysec --save '' --daemonize no >"$dir.log" 2>&1 &
    else
        local bin=$KOSHKA_BIN
        [[ $system == koshka-baseline ]] && bin=${KOSHKA_BASELINE_BIN:?KOSHKA_BASELINE_BIN is not set}
        local listen=(--listen "127.0.0.1:0" --port "messages=$port")
        # Binaries older than `--port` put the one engine they host on the --listen port.
        "$bin" serve --help 2>&1 | grep -q -- '--port' || listen=(--listen "127.0.0.1:$port")
        # shellcheck disable=SC2086
        "$bin" serve "${listen[@]}" --data-dir "$dir" \
            --threads 2 --durability everysec --engines messages $KOSHKA_ARGS >"$dir.log" 2>&1 &
    fi
    pid=$!
    if [[ $system == redis-* ]]; then
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

# info PORT COMMAND: one text request/response over loopback (`stats` for koshka, `INFO
# memory` for Redis); prints the reply.
info() {
    local port=$1 command=$2
    timeout 5 python3 - "$port" "$command" <<'PY'
import socket, sys
port, command = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
if command == "stats":
    s.sendall(b"stats\r\n")
    end = b"END\r\n"
else:
    parts = command.split()
    s.sendall(("*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(p), p) for p in parts)).encode())
    end = None
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
    if end and data.endswith(end):
        break
    if not end and data.startswith(b"$"):
        head, _, rest = data.partition(b"\r\n")
        if len(rest) >= int(head[1:]) + 2:
            break
print(data.decode(errors="replace"))
PY
}

# bench SYSTEM PORT ARGS...: runs koshka bench against SYSTEM, JSON to stdout.
bench() {
    local system=$1 port=$2
    shift 2
    local protocol=memcache model=plain
    case $system in
    redis-plain) protocol=redis ;;
    redis-indexed) protocol=redis model=indexed ;;
    esac
    timeout 3600 "$KOSHKA_BIN" bench --workload messages --protocol "$protocol" \
        --redis-model "$model" --server "127.0.0.1:$port" --users "$USERS" \
        --dialog-peers 0 --texts ru --text-size "$TEXT_CAP" --distribution uniform \
        --threads 2 --json "$@"
}

results="$workdir/results.tsv"
memory="$workdir/memory.tsv"
: >"$results"
: >"$memory"
declare -A pid_of=() port_of=()
for system in $SYSTEMS; do
    read -r pid port < <(start_server "$system") || true
    [[ -n ${pid:-} && -n ${port:-} ]] || { echo "cannot start $system" >&2; exit 1; }
    pids+=("$pid")
    pid_of[$system]=$pid
    port_of[$system]=$port
    base=$(rss_kb "$pid")
    echo "== preloading $system (pid $pid, port $port, empty VmRSS $base kB)" >&2
    bench "$system" "$port" --messages "$SENDS" --big-mailbox 0 --connections 8 \
        --preload-only >"$workdir/preload-$system.json"
    sleep 2 # let Redis's everysec fsync and koshka's binlog writer settle
    after=$(rss_kb "$pid")
    if [[ $system == koshka* ]]; then
        detail=$(info "$port" stats | grep -E '^STAT messages_' | tr -d '\r' | cut -d' ' -f2- |
            tr ' ' '=' | paste -sd' ')
    else
        detail=$(info "$port" "INFO memory" | tr -d '\r' | grep -E '^used_memory:' | paste -sd' ')
    fi
    python3 - "$workdir/preload-$system.json" "$system" "$base" "$after" "$detail" >>"$memory" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
social = report["social"]
print("\t".join([sys.argv[2], str(social["data_items"]), sys.argv[3], sys.argv[4],
                 f'{report["preload_s"]:.1f}', sys.argv[5], social["detail"]]))
PY
    tail -1 "$memory" | cut -f1-6 >&2
done

systems=($SYSTEMS)
for ((round = 1; round <= PAIRS; round++)); do
    for scenario in $SCENARIOS; do
        name=${scenario%%[0-9]*}
        connections=${scenario#"$name"}
        connections=${connections%x*}
        depth=${scenario##*x}
        mix=()
        [[ $name == send ]] && mix=(--mix send)
        # Rotate the order of the systems from round to round.
        order=()
        for ((i = 0; i < ${#systems[@]}; i++)); do
            order+=("${systems[$(((i + round - 1) % ${#systems[@]}))]}")
        done
        for system in "${order[@]}"; do
            out="$workdir/run-$scenario-$system-$round.json"
            if bench "$system" "${port_of[$system]}" --messages "$SENDS" --big-mailbox 0 \
                --connections "$connections" --pipeline "$depth" --duration "$DURATION" \
                --warmup 1 --seed "$round" --server-pid "${pid_of[$system]}" "${mix[@]}" \
                >"$out" 2>"$out.err"; then
                python3 - "$out" "$scenario" "$system" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
kinds = {k["name"]: k for k in r["social"]["ops_by_kind"]}
cpu = r["social"].get("server_cpu_s") or 0
print("\t".join(sys.argv[2:4] + [str(r["ops_per_sec"]), str(r["ops"]), str(cpu), str(l["p50"]),
                 str(l["p99"]), str(l["p999"]), str(r["errors"]), json.dumps(kinds)]))
PY
                tail -1 "$results" | cut -f1-9 >&2
            else
                echo "run failed: $scenario $system round $round" >&2
                cat "$out.err" >&2
            fi
        done
    done
done
for system in $SYSTEMS; do
    stop_pid "${pid_of[$system]}"
done
rm -rf "$workdir"/koshka-* "$workdir"/redis-*

# search10k: a 10 000-message mailbox (user USERS+1 with 100 correspondents), fresh servers.
search_users=1000
if [[ $SEARCH == 1 ]]; then
    for system in koshka redis-indexed; do
        [[ " $SYSTEMS " == *" $system "* ]] || continue
        read -r pid port < <(start_server "$system") || true
        pids+=("$pid")
        pid_of[$system]=$pid
        port_of[$system]=$port
        USERS=$search_users bench "$system" "$port" --messages 0 --big-mailbox 10000 \
            --connections 8 --preload-only >/dev/null
    done
    for ((round = 1; round <= PAIRS; round++)); do
        order=(koshka redis-indexed)
        ((round % 2 == 0)) && order=(redis-indexed koshka)
        for system in "${order[@]}"; do
            [[ -n ${pid_of[$system]:-} ]] || continue
            out="$workdir/run-search10k-$system-$round.json"
            if USERS=$search_users bench "$system" "${port_of[$system]}" --messages 0 \
                --big-mailbox 10000 --connections 1 --pipeline 1 --duration "$DURATION" \
                --warmup 1 --seed "$round" --mix bigsearch --server-pid "${pid_of[$system]}" \
                >"$out" 2>"$out.err"; then
                python3 - "$out" "search10k" "$system" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
kinds = {k["name"]: k for k in r["social"]["ops_by_kind"]}
cpu = r["social"].get("server_cpu_s") or 0
print("\t".join(sys.argv[2:4] + [str(r["ops_per_sec"]), str(r["ops"]), str(cpu), str(l["p50"]),
                 str(l["p99"]), str(l["p999"]), str(r["errors"]), json.dumps(kinds)]))
PY
                tail -1 "$results" | cut -f1-9 >&2
            else
                echo "run failed: search10k $system round $round" >&2
                cat "$out.err" >&2
            fi
        done
    done
fi

echo
echo "## koshka vs Redis $redis_version, messages ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS alternating rounds x ${DURATION}s," \
    "koshka --durability everysec, redis appendonly everysec; $SENDS sends between $USERS uniform users," \
    "whole fortunes-ru texts capped at $TEXT_CAP B; KOSHKA_ARGS='$KOSHKA_ARGS'"
echo
python3 - "$results" "$memory" "$SYSTEMS" <<'PY'
import json, statistics, sys
from collections import defaultdict
systems = sys.argv[3].split()
runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    scenario, system, ops_s, ops, cpu, p50, p99, p999, errors, kinds = line.rstrip("\n").split("\t")
    if scenario not in order:
        order.append(scenario)
    runs[(scenario, system)].append(dict(
        ops=float(ops_s), n=int(ops), cpu=float(cpu), p50=float(p50), p99=float(p99),
        p999=float(p999), errors=int(errors), kinds=json.loads(kinds)))
med = lambda rows, f: statistics.median(f(r) for r in rows) if rows else None
f0 = lambda v: f"{v:,.0f}" if v is not None else "n/a"
f1 = lambda v: "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
per_cpu = lambda r: r["n"] / r["cpu"] if r["cpu"] > 0 else 0
print("Throughput = logical operations/s (one operation = all its round trips); ops per server")
print("CPU-second = operations in the window / the server's user+system CPU seconds in it;")
print("latency of the whole operation in µs. Medians over the rounds; koshka/R = koshka's median")
print("over that system's median.")
print()
print("| scenario | system | ops/s | koshka/R | server CPU s | ops per CPU-s | koshka/R | p50 / p99 / p99.9 µs | runs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario in order:
    k = runs.get((scenario, "koshka"), [])
    for system in systems:
        rows = runs.get((scenario, system), [])
        if not rows:
            continue
        ops, pc = med(rows, lambda r: r["ops"]), med(rows, per_cpu)
        cpu = med(rows, lambda r: r["cpu"])
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "—"
        kr = ratio(med(k, lambda r: r["ops"]), ops) if system != "koshka" else "—"
        kc = ratio(med(k, per_cpu), pc) if system != "koshka" else "—"
        lat = " / ".join(f1(med(rows, lambda r, q=q: r[q])) for q in ("p50", "p99", "p999"))
        errs = sum(r["errors"] for r in rows)
        print(f"| {scenario} | {system} | {f0(ops)} | {kr} | {cpu:.2f} | {f0(pc)} | {kc} | {lat} | {len(rows)} | {errs} |")
print()
for scenario in order:
    if not scenario.startswith("mix"):
        continue
    names = []
    for system in systems:
        for row in runs.get((scenario, system), []):
            for op in row["kinds"]:
                if op not in names:
                    names.append(op)
    print(f"{scenario}, per operation (medians; ops/s, p50 / p99 µs):")
    print()
    print("| operation | " + " | ".join(systems) + " |")
    print("|---|" + "---:|" * len(systems))
    for op in names:
        cells = []
        for system in systems:
            rows = [r for r in runs.get((scenario, system), []) if op in r["kinds"]]
            if not rows:
                cells.append("n/a")
                continue
            o = med(rows, lambda r: r["kinds"][op]["ops_per_sec"])
            p50 = med(rows, lambda r: r["kinds"][op]["latency_us"]["p50"])
            p99 = med(rows, lambda r: r["kinds"][op]["latency_us"]["p99"])
            cells.append(f"{f0(o)}, {f1(p50)} / {f1(p99)}")
        print(f"| {op} | " + " | ".join(cells) + " |")
    print()
mem = {}
for line in open(sys.argv[2]):
    system, copies, base, after, preload_s, detail, data = line.rstrip("\n").split("\t")
    mem[system] = (int(copies), int(base), int(after), float(preload_s), detail, data)
if mem:
    print("| system | message copies | VmRSS empty | VmRSS loaded | growth | B per copy | koshka/R | preload s | detail |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    kper = None
    if "koshka" in mem:
        c, b, a = mem["koshka"][:3]
        kper = (a - b) * 1024 / c
    for system in systems:
        if system not in mem:
            continue
        copies, base, after, preload_s, detail, _ = mem[system]
        per = (after - base) * 1024 / copies
        ratio = f"{kper / per:.2f}x" if kper and system != "koshka" else "—"
        print(f"| {system} | {copies:,} | {base / 1024:,.1f} MiB | {after / 1024:,.1f} MiB | "
              f"{(after - base) / 1024:,.1f} MiB | {per:,.0f} | {ratio} | {preload_s:.0f} | {detail} |")
    print()
    print("data:", next(iter(mem.values()))[5])
PY
