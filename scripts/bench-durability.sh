#!/usr/bin/env bash
# Durability benchmark of koshka kv: set throughput per durability mode vs memcached, binlog
# replay rate, snapshot load rate, and the cost of a snapshot under a steady write load.
# Results (Markdown, with the exact commands) go to stdout; progress to stderr.
#
#   scripts/bench-durability.sh > /tmp/durability.md
#   PAIRS=5 DURATION=5 REPLAY_BYTES=1073741824 scripts/bench-durability.sh
#   PARTS=replay,snapload scripts/bench-durability.sh
#
# Environment:
#   PARTS=fsync,throughput,replay,snapload,snapload-under-write   which parts to run
#   PAIRS=5            alternating rounds of the four servers per mix (throughput); medians
#   DURATION=5         seconds per throughput run (koshka bench adds a 1 s warm-up)
#   PIPELINES="1"      pipeline depths for the throughput part (e.g. "1 16")
#   REPLAY_BYTES=1073741824  binlog bytes to build for the replay part
#   REPLAY_KEYS=1000000      key space of the replay load (bounds the replayed state)
#   REPLAY_RUNS=6      timed restarts (alternating warm page cache / cold: fadvise DONTNEED)
#   SNAP_ITEMS=4000000 items in the state whose snapshot is loaded and written under load
#   SNAP_RUNS=6        timed snapshot restarts (alternating warm / cold)
#   WINDOWS=5          alternating (quiet, snapshotting) window pairs under load
#   WINDOW=10          seconds per window
#   KOSHKA_BIN=${CARGO_TARGET_DIR:-target}/release/koshka   (built unless SKIP_BUILD=1)
#   WORK_DIR=/tmp      where the temporary data directories go (same disk as the binlog)
#   STORAGE_EXTRA=     more koshka [storage] lines (snapshot_nice, snapshot_rate, replay_threads)
#
# Servers (free loopback ports, stopped by PID, data deleted at exit):
#   memcached -l 127.0.0.1 -p PORT -U 0 -u root -t 2 -m 4096 -c 4096
#   koshka serve --listen 127.0.0.1:PORT --data-dir TMP --threads 2 --engines kv \
#       --durability always|everysec|none --config CFG
#   CFG: [storage] memory_limit = "8GiB", snapshot_log_bytes = "1TiB" (no automatic
#   snapshot shortcuts a replay or lands in a measurement window), snapshot_on_shutdown = false
# Load: koshka bench --server 127.0.0.1:PORT --connections 64 --threads 2 --keys N \
#   --key-size 32 --value-size 100 --get-ratio R --pipeline P --duration S --warmup 1 \
#   [--preload] --json
# No taskset: client and servers share both cores (see scripts/bench-kv.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PARTS=${PARTS:-fsync,throughput,replay,snapload,snapload-under-write}
PAIRS=${PAIRS:-5}
DURATION=${DURATION:-5}
PIPELINES=${PIPELINES:-1}
REPLAY_BYTES=${REPLAY_BYTES:-1073741824}
REPLAY_KEYS=${REPLAY_KEYS:-1000000}
REPLAY_RUNS=${REPLAY_RUNS:-6}
SNAP_ITEMS=${SNAP_ITEMS:-4000000}
SNAP_RUNS=${SNAP_RUNS:-6}
WINDOWS=${WINDOWS:-5}
WINDOW=${WINDOW:-10}
KOSHKA_BIN=${KOSHKA_BIN:-${CARGO_TARGET_DIR:-target}/release/koshka}
PROBE_BIN=${PROBE_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/replay_probe}
WORK_DIR=${WORK_DIR:-/tmp}
CONNECTIONS=64

has_part() { [[ ,$PARTS, == *,$1,* ]]; }

for tool in memcached python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== building $KOSHKA_BIN and replay_probe" >&2
    cargo build --release -p koshka --bin koshka >&2
    cargo build --release -p koshka-binlog --example replay_probe >&2 ||
        echo "NOTE: replay_probe did not build; its rows are skipped" >&2
fi
koshka_has_serve "$KOSHKA_BIN" || { echo "$KOSHKA_BIN has no 'serve --listen'" >&2; exit 1; }

workdir=$(mktemp -d "$WORK_DIR/koshka-bench-dur.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

cfg="$workdir/koshka.toml"
cat >"$cfg" <<'TOML'
[storage]
memory_limit = "8GiB"
snapshot_log_bytes = "1TiB"
snapshot_on_shutdown = false
TOML
# More [storage] settings for koshka, one per line (e.g. $'snapshot_nice = 0\nreplay_threads = 1').
[[ -n ${STORAGE_EXTRA:-} ]] && printf '%s\n' "$STORAGE_EXTRA" >>"$cfg"

# The helper: stats, waits, page-cache eviction, the snapshot-under-load sampler, fsync probe.
helper="$workdir/helper.py"
cat >"$helper" <<'PY'
import json, os, socket, statistics, sys, time

def stats(port, group=""):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"stats {group}\r\n".encode() if group else b"stats\r\n")
    buf = b""
    while not (buf.endswith(b"END\r\n") or buf.endswith(b"ERROR\r\n")):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    out = {}
    for line in buf.decode().split("\r\n"):
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out

def version_ok(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"version\r\n")
        ok = s.recv(100).startswith(b"VERSION")
        s.close()
        return ok
    except OSError:
        return False

def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "stat":  # PORT NAME...
    st = stats(int(args[0]))
    print(" ".join(st.get(n, "?") for n in args[1:]))
elif cmd == "wait-version":  # PORT PID START_EPOCH TIMEOUT -> seconds since START
    port, pid, start, timeout = int(args[0]), int(args[1]), float(args[2]), float(args[3])
    while time.time() - start < timeout:
        if not pid_alive(pid):
            sys.exit(f"server {pid} exited")
        if version_ok(port):
            print(f"{time.time() - start:.3f}")
            sys.exit(0)
        time.sleep(0.01)
    sys.exit("timeout waiting for version")
elif cmd == "wait-pos":  # PORT BYTES TIMEOUT: until binlog_position >= BYTES
    port, target, timeout = int(args[0]), int(args[1]), float(args[2])
    start = time.time()
    while time.time() - start < timeout:
        pos = int(stats(port).get("binlog_position", 0))
        if pos >= target:
            print(pos)
            sys.exit(0)
        time.sleep(0.2)
    sys.exit("timeout waiting for the binlog to grow")
elif cmd == "snapshot":  # PORT TIMEOUT: request one snapshot, wait for it, print its ms
    port, timeout = int(args[0]), float(args[1])
    before = int(stats(port)["snapshots_written"])
    stats(port, "snapshot")
    start = time.time()
    while time.time() - start < timeout:
        st = stats(port)
        if int(st["snapshots_written"]) > before:
            print(st["snapshot_last_duration_ms"], f"{time.time() - start:.3f}")
            sys.exit(0)
        time.sleep(0.05)
    sys.exit("timeout waiting for the snapshot")
elif cmd == "fadvise-dontneed":  # FILES...: evict them from the page cache (clean pages)
    for path in args:
        fd = os.open(path, os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
elif cmd == "fsync":  # DIR N: append+fdatasync latency, 4 KiB and 64 KiB
    d, n = args[0], int(args[1])
    for size in (4096, 65536):
        path = os.path.join(d, "fsync-probe")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        buf = b"x" * size
        lat = []
        for _ in range(n):
            os.write(fd, buf)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
        os.close(fd)
        os.unlink(path)
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"{size}\t{statistics.median(lat):.2f}\t{q(0.9):.2f}\t{q(0.99):.2f}\t{statistics.mean(lat):.2f}")
elif cmd == "sampler":  # PORT PID DATADIR WINDOWS WINDOW OUT_JSON
    port, pid, datadir = int(args[0]), int(args[1]), args[2]
    windows, window, out = int(args[3]), float(args[4]), args[5]
    def ops():
        st = stats(port)
        return int(st["cmd_get"]) + int(st["cmd_set"]), int(st["snapshots_written"]), st
    def prune():  # keep only the newest snapshot: bounded disk use
        snaps = sorted(f for f in os.listdir(datadir) if f.endswith(".snap"))
        for f in snaps[:-1]:
            os.unlink(os.path.join(datadir, f))
    result = {"quiet": [], "snap": [], "rss_quiet": [], "rss_snap": [], "snap_ms": [],
              "hwm_start": status_kb(pid, "VmHWM")}
    for w in range(windows):
        order = ["quiet", "snap"] if w % 2 == 0 else ["snap", "quiet"]
        for kind in order:
            o0, n0, _ = ops()
            t0 = time.time()
            pending = None  # snapshots_written value that marks the requested one done
            rss = []
            while time.time() - t0 < window:
                if kind == "snap":
                    o, n, st = ops()
                    if pending is None or n >= pending:
                        if pending is not None:
                            result["snap_ms"].append(int(st["snapshot_last_duration_ms"]))
                            prune()
                        stats(port, "snapshot")
                        pending = n + 1
                rss.append(status_kb(pid, "VmRSS"))
                time.sleep(0.1)
            o1, n1, _ = ops()
            t1 = time.time()
            result[kind].append((o1 - o0) / (t1 - t0))
            result["rss_" + kind].extend(rss)
            if kind == "snap":  # let the last snapshot finish outside any window
                while ops()[1] < pending:
                    result["rss_snap"].append(status_kb(pid, "VmRSS"))
                    time.sleep(0.1)
                st = stats(port)
                result["snap_ms"].append(int(st["snapshot_last_duration_ms"]))
                prune()
            print(f"window {w + 1} {kind}: {result[kind][-1]:,.0f} ops/s, "
                  f"VmRSS max {max(rss) / 1024:.0f} MiB", file=sys.stderr)
    result["hwm_end"] = status_kb(pid, "VmHWM")
    json.dump(result, open(out, "w"))
else:
    sys.exit(f"unknown helper command {cmd}")
PY
h() { python3 "$helper" "$@"; }

# start_koshka DATA DURABILITY [LOG]: starts koshka on a free port, prints "PID PORT".
start_koshka() {
    local data=$1 durability=$2 log=${3:-$workdir/koshka-$2.log} port pid
    port=$(free_port)
    "$KOSHKA_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 --engines kv \
        --durability "$durability" --config "$cfg" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_version "$port" "$pid" 600 >&2 || { cat "$log" >&2; return 1; }
    echo "$pid $port"
}

start_memcached() {
    local port pid
    port=$(free_port)
    # shellcheck disable=SC2046
    memcached $(memcached_args "$port") -t 2 -m 4096 -c 4096 >"$workdir/memcached.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_version "$port" "$pid" 60 >&2 || return 1
    echo "$pid $port"
}

# has_live_thread PID: whether any thread of PID has not exited yet.
has_live_thread() {
    local status
    for status in /proc/"$1"/task/*/status; do
        [[ -e $status ]] || continue
        grep -q '^State:[[:space:]]*[ZX]' "$status" 2>/dev/null || return 0
    done
    return 1
}

# kill9 PID: crash the server (no shutdown path runs) and wait until every thread is gone.
# Servers started through start_koshka are not children of this shell, so `wait` returns at
# once; and the process's files (its data directory lock) stay open until its last thread
# exits, which takes a while for a thread inside fdatasync, even after the main thread shows
# as a zombie. The next start on the directory would find the lock still held.
kill9() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    while has_live_thread "$1"; do
        sleep 0.05
    done
}

# run_bench PORT GET_RATIO PIPELINE: prints ops/s.
run_bench() {
    local port=$1 ratio=$2 pipeline=$3
    timeout $((DURATION + 120)) "$KOSHKA_BIN" bench --server "127.0.0.1:$port" \
        --connections "$CONNECTIONS" --threads 2 --keys 100000 --key-size 32 --value-size 100 \
        --get-ratio "$ratio" --pipeline "$pipeline" --duration "$DURATION" --warmup 1 \
        --preload --json >"$workdir/bench.json" 2>&1 || true
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["ops_per_sec"]))' \
        "$workdir/bench.json" 2>/dev/null || { cat "$workdir/bench.json" >&2; echo ""; }
}

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v) if v else "nan")' "$@"; }
fmt() { python3 -c 'import sys; print(f"{float(sys.argv[1]):,.{int(sys.argv[2])}f}")' "$1" "${2:-0}"; }

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
echo "# koshka durability benchmark"
echo
echo "commit $commit (+ working tree), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg), data on $(df -h "$workdir" | awk 'NR==2 {print $1 " (" $2 ", " $4 " free)"}')"
echo

# ------------------------------------------------------------------------------------------
if has_part fsync; then
    echo "== fsync latency" >&2
    echo "## fdatasync latency of this disk"
    echo
    echo "\`python3 helper.py fsync DIR 300\`: append N bytes with write(2), then time fdatasync(2), 300 times."
    echo
    echo "| write size | median ms | p90 ms | p99 ms | mean ms |"
    echo "|---:|---:|---:|---:|---:|"
    h fsync "$workdir" 300 | while IFS=$'\t' read -r size med p90 p99 mean; do
        echo "| $size B | $med | $p90 | $p99 | $mean |"
    done
    echo
fi

# ------------------------------------------------------------------------------------------
if has_part throughput; then
    echo "== throughput: memcached vs koshka none/everysec/always" >&2
    results="$workdir/throughput.tsv"
    : >"$results"
    read -r mc_pid mc_port < <(start_memcached)
    declare -A port_of=([memcached]=$mc_port)
    declare -A pid_of=([memcached]=$mc_pid)
    for mode in none everysec always; do
        read -r kp kport < <(start_koshka "$workdir/data-$mode" "$mode")
        port_of[$mode]=$kport
        pid_of[$mode]=$kp
    done
    servers=(memcached none everysec always)
    for ((pair = 1; pair <= PAIRS; pair++)); do
        for pipeline in $PIPELINES; do
            for ratio in 0 0.5; do
                # Rotate the order each round so no server always runs first or last.
                order=()
                for ((i = 0; i < 4; i++)); do order+=("${servers[$(((i + pair) % 4))]}"); done
                for server in "${order[@]}"; do
                    ops=$(run_bench "${port_of[$server]}" "$ratio" "$pipeline")
                    echo "round $pair get=$ratio p=$pipeline $server: ${ops:-FAILED} ops/s" >&2
                    [[ -n $ops ]] && printf '%s\t%s\t%s\t%s\n' "$ratio" "$pipeline" "$server" "$ops" >>"$results"
                done
            done
        done
    done
    for server in "${servers[@]}"; do stop_pid "${pid_of[$server]}"; done
    rm -rf "$workdir"/data-*
    echo "## Requirement 1: set throughput per durability mode vs memcached"
    echo
    echo "$PAIRS rounds x ${DURATION}s per server and mix, the four servers running side by side and"
    echo "measured one after another in a rotating order; medians (min-max). Each run:"
    echo
    echo '```'
    echo "koshka bench --server 127.0.0.1:PORT --connections 64 --threads 2 --keys 100000 --key-size 32 \\"
    echo "    --value-size 100 --get-ratio R --pipeline P --duration $DURATION --warmup 1 --preload --json"
    echo "memcached -l 127.0.0.1 -p PORT -U 0 -u root -t 2 -m 4096 -c 4096"
    echo "koshka serve --listen 127.0.0.1:PORT --data-dir TMP --threads 2 --engines kv --durability MODE --config CFG"
    echo '```'
    echo
    python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    ratio, pipeline, server, ops = line.split()
    runs[(ratio, pipeline, server)].append(float(ops))
print("| mix | pipeline | memcached | koshka none | koshka everysec | koshka always | everysec/memcached (target >= 0.8) | always/everysec (target >= 0.5) | none/memcached |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = sorted({(r, p) for r, p, _ in runs}, key=lambda k: (int(k[1]), k[0]))
for ratio, pipeline in keys:
    med = {}
    cells = []
    for s in ("memcached", "none", "everysec", "always"):
        v = runs.get((ratio, pipeline, s), [])
        med[s] = statistics.median(v) if v else None
        cells.append(f"{med[s]:,.0f} ({min(v):,.0f}-{max(v):,.0f})" if v else "n/a")
    def ratio_of(a, b, target=None):
        if not med[a] or not med[b]:
            return "n/a"
        r = med[a] / med[b]
        verdict = "" if target is None else (" met" if r >= target else " NOT met")
        return f"{r:.2f}x{verdict}"
    mix = "100 % sets" if ratio == "0" else "50/50 get/set"
    print(f"| {mix} | {pipeline} | " + " | ".join(cells) + f" | {ratio_of('everysec', 'memcached', 0.8)} | {ratio_of('always', 'everysec', 0.5)} | {ratio_of('none', 'memcached')} |")
PY
    echo
fi

# ------------------------------------------------------------------------------------------
if has_part replay; then
    echo "== replay: building a $REPLAY_BYTES-byte binlog" >&2
    data="$workdir/data-replay"
    read -r kp kport < <(start_koshka "$data" everysec "$workdir/replay-load.log")
    timeout 3600 "$KOSHKA_BIN" bench --server "127.0.0.1:$kport" --connections "$CONNECTIONS" \
        --threads 2 --keys "$REPLAY_KEYS" --key-size 32 --value-size 100 --get-ratio 0 \
        --pipeline 32 --duration 3000 --warmup 0 --json >"$workdir/replay-bench.json" 2>&1 &
    bench_pid=$!
    pids+=("$bench_pid")
    load_start=$SECONDS
    pos=$(h wait-pos "$kport" "$REPLAY_BYTES" 3000)
    load_secs=$((SECONDS - load_start))
    stop_pid "$bench_pid"
    kill9 "$kp"
    log_bytes=$(du -sb "$data/kv" | cut -f1)
    echo "binlog: $pos log bytes ($log_bytes on disk) in ${load_secs}s; df: $(df -h "$workdir" | awk 'NR==2 {print $4}') free" >&2
    replay_rows="$workdir/replay.tsv"
    : >"$replay_rows"
    for ((run = 1; run <= REPLAY_RUNS; run++)); do
        cache=warm
        if ((run % 2 == 0)); then
            cache=cold
            h fadvise-dontneed "$data"/kv/kv.*.bin
        fi
        port=$(free_port)
        start=$(date +%s.%N)
        "$KOSHKA_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 --engines kv \
            --durability everysec --config "$cfg" >"$workdir/replay-$run.log" 2>&1 &
        kp=$!
        pids+=("$kp")
        wall=$(h wait-version "$port" "$kp" "$start" 600) || { cat "$workdir/replay-$run.log" >&2; exit 1; }
        read -r records bytes secs items < <(h stat "$port" replay_records replay_bytes replay_seconds curr_items)
        ready=$(grep -Eo 'kv: ready in [0-9.]+s' "$workdir/replay-$run.log" | grep -Eo '[0-9.]+' | head -1)
        kill9 "$kp"
        echo "replay run $run ($cache): $records records, $bytes bytes in ${secs}s (ready ${ready}s, version after ${wall}s), $items items" >&2
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cache" "$records" "$bytes" "$secs" "$ready" "$wall" "$items" >>"$replay_rows"
    done
    probe_out=""
    if [[ -x $PROBE_BIN ]]; then
        echo "== replay_probe" >&2
        probe_out=$("$PROBE_BIN" "$data/kv" kv 3 2>&1 || true)
        echo "$probe_out" >&2
    fi
    rm -rf "$data"
    echo "## Requirement 2: binlog replay rate (target >= 1.5 M records/s of 100-byte sets, 1 GiB in <= 10 s)"
    echo
    echo "Built with \`koshka bench ... --keys $REPLAY_KEYS --get-ratio 0 --pipeline 32\` against"
    echo "\`--durability everysec\` until \`binlog_position\` >= $REPLAY_BYTES ($pos log bytes, $log_bytes bytes on"
    echo "disk, ${load_secs}s of loading), then \`kill -9\`. Each run restarts the server on that data"
    echo "(\`koshka serve ... --durability everysec --config CFG\`), times the launch until \`version\`"
    echo "answers, reads \`replay_records\`, \`replay_bytes\`, \`replay_seconds\` from \`stats\`, and kills it"
    echo "with -9 again. Cold runs first evict the segments from the page cache"
    echo "(\`posix_fadvise(POSIX_FADV_DONTNEED)\` per file). Records include TIME records (one per second"
    echo "of loading)."
    echo
    python3 - "$replay_rows" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
print("| page cache | runs | records | log MB | replay s (median) | records/s | MB/s | `ready in` s | launch to `version` s | 1 GiB at this rate, s | items after replay |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for cache in ("warm", "cold"):
    rs = [r for r in rows if r[0] == cache]
    if not rs:
        continue
    rec = int(rs[0][1]); byt = int(rs[0][2])
    secs = statistics.median(float(r[3]) for r in rs)
    ready = statistics.median(float(r[4]) for r in rs if r[4])
    wall = statistics.median(float(r[5]) for r in rs)
    rps = rec / secs
    print(f"| {cache} | {len(rs)} | {rec:,} | {byt / 1e6:,.0f} | {secs:.2f} ({min(float(r[3]) for r in rs):.2f}-{max(float(r[3]) for r in rs):.2f}) | {rps:,.0f} | {byt / secs / 1e6:,.0f} | {ready:.2f} | {wall:.2f} | {(1 << 30) / (byt / secs):.1f} | {rs[0][6]} |")
PY
    if [[ -n $probe_out ]]; then
        echo
        echo "In-process split of the same log, warm cache"
        echo "(\`cargo run --release -p koshka-binlog --example replay_probe -- DATA/kv kv 3\`, median of 3):"
        echo
        echo '```'
        echo "$probe_out"
        echo '```'
    fi
    echo
fi

# ------------------------------------------------------------------------------------------
snap_data="$workdir/data-snap"
snap_pid=""
snap_port=""
if has_part snapload || has_part snapload-under-write; then
    echo "== snapshot: loading $SNAP_ITEMS items" >&2
    read -r snap_pid snap_port < <(start_koshka "$snap_data" everysec "$workdir/snap-load.log")
    preload_start=$SECONDS
    timeout 1800 "$KOSHKA_BIN" bench --server "127.0.0.1:$snap_port" --connections "$CONNECTIONS" \
        --threads 2 --keys "$SNAP_ITEMS" --key-size 32 --value-size 100 --get-ratio 1 --preload \
        --duration 0.1 --warmup 0 --json >/dev/null
    echo "preloaded in $((SECONDS - preload_start))s" >&2
    read -r snap_ms _ < <(h snapshot "$snap_port" 600)
    read -r items < <(h stat "$snap_port" curr_items)
    kill9 "$snap_pid"
    snap_file=$(find "$snap_data/kv" -name 'kv.*.snap' | sort | tail -1)
    snap_bytes=$(stat -c %s "$snap_file")
    echo "snapshot $snap_file: $snap_bytes bytes, $items items, written in ${snap_ms} ms" >&2
fi

if has_part snapload; then
    snap_rows="$workdir/snap.tsv"
    : >"$snap_rows"
    for ((run = 1; run <= SNAP_RUNS; run++)); do
        cache=warm
        if ((run % 2 == 0)); then
            cache=cold
            h fadvise-dontneed "$snap_file" "$snap_data"/kv/kv.*.bin
        fi
        port=$(free_port)
        start=$(date +%s.%N)
        "$KOSHKA_BIN" serve --listen "127.0.0.1:$port" --data-dir "$snap_data" --threads 2 \
            --engines kv --durability everysec --config "$cfg" >"$workdir/snap-$run.log" 2>&1 &
        kp=$!
        pids+=("$kp")
        wall=$(h wait-version "$port" "$kp" "$start" 600) || { cat "$workdir/snap-$run.log" >&2; exit 1; }
        read -r loaded rsecs ritems < <(h stat "$port" snapshot_loaded_pos replay_seconds curr_items)
        ready=$(grep -Eo 'kv: ready in [0-9.]+s' "$workdir/snap-$run.log" | grep -Eo '[0-9.]+' | head -1)
        kill9 "$kp"
        echo "snapshot run $run ($cache): ready ${ready}s (replay ${rsecs}s), version after ${wall}s, loaded pos $loaded, $ritems items" >&2
        printf '%s\t%s\t%s\t%s\t%s\n' "$cache" "$ready" "$rsecs" "$wall" "$ritems" >>"$snap_rows"
    done
    echo "## Requirement 3: snapshot load (target >= 300 MB/s)"
    echo
    echo "State: \`koshka bench ... --keys $SNAP_ITEMS --get-ratio 1 --preload --duration 0.1\` ($items items),"
    echo "then \`stats snapshot\` (written in $snap_ms ms: $(fmt "$(python3 -c "print($snap_bytes / max(1, $snap_ms) / 1e3)")") MB/s), then \`kill -9\`."
    echo "Snapshot file: $snap_bytes bytes. Each run restarts the server on that directory; load time ="
    echo "the \`kv: ready in X s\` log line (snapshot validation = one CRC pass over the file, then"
    echo "Engine::load_snapshot, then the (empty) log tail) minus \`replay_seconds\`. Cold runs evict"
    echo "the snapshot and segments from the page cache first."
    echo
    python3 - "$snap_rows" "$snap_bytes" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
size = int(sys.argv[2])
print("| page cache | runs | snapshot MB | load s (median, min-max) | MB/s | launch to `version` s | items |")
print("|---|---:|---:|---:|---:|---:|---:|")
for cache in ("warm", "cold"):
    rs = [r for r in rows if r[0] == cache]
    if not rs:
        continue
    loads = [float(r[1]) - float(r[2]) for r in rs]
    load = statistics.median(loads)
    wall = statistics.median(float(r[3]) for r in rs)
    print(f"| {cache} | {len(rs)} | {size / 1e6:,.0f} | {load:.2f} ({min(loads):.2f}-{max(loads):.2f}) | {size / load / 1e6:,.0f} | {wall:.2f} | {rs[0][4]} |")
PY
    echo
fi

if has_part snapload-under-write; then
    echo "== snapshot under a steady 50/50 load" >&2
    read -r kp kport < <(start_koshka "$snap_data" everysec "$workdir/snap-steady.log")
    total=$((2 * WINDOWS * WINDOW + 30))
    timeout $((total + 60)) "$KOSHKA_BIN" bench --server "127.0.0.1:$kport" \
        --connections "$CONNECTIONS" --threads 2 --keys "$SNAP_ITEMS" --key-size 32 \
        --value-size 100 --get-ratio 0.5 --pipeline 1 --duration "$total" --warmup 0 \
        --json >"$workdir/steady-bench.json" 2>&1 &
    bench_pid=$!
    pids+=("$bench_pid")
    sleep 3
    h sampler "$kport" "$kp" "$snap_data/kv" "$WINDOWS" "$WINDOW" "$workdir/sampler.json"
    stop_pid "$bench_pid"
    stop_pid "$kp"
    echo "## Requirement 4: snapshot under a steady write load (targets: <= 20 % throughput loss, peak RSS <= 1.25x steady)"
    echo
    echo "The state of requirement 3 ($items items) is reloaded, then a steady 50/50 load runs:"
    echo
    echo '```'
    echo "koshka bench --server 127.0.0.1:PORT --connections 64 --threads 2 --keys $SNAP_ITEMS --key-size 32 \\"
    echo "    --value-size 100 --get-ratio 0.5 --pipeline 1 --duration $total --warmup 0 --json"
    echo '```'
    echo
    echo "$WINDOWS pairs of ${WINDOW}s windows alternate (quiet first in odd pairs, snapshotting first in"
    echo "even ones). In a snapshotting window \`stats snapshot\` is sent again as soon as the previous"
    echo "snapshot is written, so one is always in progress; a snapshot still running at the window's"
    echo "end is waited for before the next quiet window. ops/s = delta(cmd_get + cmd_set) / window"
    echo "(server counters). VmRSS is sampled every 0.1 s from /proc/PID/status; older snapshot files"
    echo "are deleted after each one (disk bound)."
    echo
    python3 - "$workdir/sampler.json" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
q, s = statistics.median(r["quiet"]), statistics.median(r["snap"])
loss = 1 - s / q
# Each pair of adjacent windows (quiet, snapshotting) shares the machine's load at the time:
# the median of the per-pair losses is less moved by load that drifts over the run.
paired = statistics.median(1 - sn / qu for qu, sn in zip(r["quiet"], r["snap"]))
steady = statistics.median(r["rss_quiet"])
peak = max(r["rss_snap"])
print("| quiet ops/s (median, min-max) | snapshotting ops/s (median, min-max) | loss (target <= 20 %) | loss, median of pairs | snapshots written | snapshot ms (median) | steady VmRSS MiB (median, quiet) | peak VmRSS MiB (snapshotting) | peak/steady (target <= 1.25) | VmHWM MiB at end |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ok1 = "met" if loss <= 0.20 else "NOT met"
ok2 = "met" if peak / steady <= 1.25 else "NOT met"
print(f"| {q:,.0f} ({min(r['quiet']):,.0f}-{max(r['quiet']):,.0f}) | {s:,.0f} ({min(r['snap']):,.0f}-{max(r['snap']):,.0f}) | {loss * 100:.1f} % {ok1} | {paired * 100:.1f} % | {len(r['snap_ms'])} | {statistics.median(r['snap_ms']) if r['snap_ms'] else 'n/a'} | {steady / 1024:,.0f} | {peak / 1024:,.0f} | {peak / steady:.2f}x {ok2} | {r['hwm_end'] / 1024:,.0f} |")
print()
print("Per window (ops/s): quiet " + ", ".join(f"{v:,.0f}" for v in r["quiet"]) + "; snapshotting " + ", ".join(f"{v:,.0f}" for v in r["snap"]) + ".")
PY
    echo
fi
rm -rf "$snap_data"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
