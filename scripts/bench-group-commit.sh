#!/usr/bin/env bash
# Group commit under durability `always`: set throughput against the number of connections
# waiting, next to `everysec`, and the fdatasync bound of this disk measured by a plain loop.
# Markdown to stdout, progress to stderr.
#
#   scripts/bench-group-commit.sh > /tmp/group-commit.md
#   PAIRS=5 DURATION=5 CONNS="1 4 16 64 256" scripts/bench-group-commit.sh
#
# Environment:
#   PAIRS=5          alternating (always, everysec) rounds per connection count; medians
#   DURATION=5       seconds per run (koshka bench adds a 1 s warm-up)
#   CONNS="1 4 16 64 256"   connection counts (closed loop, pipeline 1: at most CONNS sets wait)
#   GET_RATIO=0      share of gets (0 = every request is a set that waits for the log)
#   FSYNC_N=300      fdatasync calls per probe size
#   KOSHKA_BIN=${CARGO_TARGET_DIR:-target}/release/koshka (built unless SKIP_BUILD=1)
#   WORK_DIR=/tmp    where the data directories go (the disk being measured)
#
# fdatasync probe (the physical bound): a plain loop that appends N bytes with write(2) and
# then calls fdatasync(2), FSYNC_N times, for N = 150 (one 100-byte set record) and 4096, to a
# plain growing file and to one preallocated with fallocate(FALLOC_FL_KEEP_SIZE) as the binlog
# preallocates its segments (an fdatasync there is much cheaper: no block allocation).
# A connection at pipeline 1 has at most one set waiting, so with C connections one fdatasync
# can acknowledge at most C sets: the ceiling is C / (mean fdatasync latency, preallocated),
# and at most 1 / latency fdatasyncs happen per second however many connections wait.
#
# Servers (fresh per mode, free loopback ports, stopped by PID, data deleted at exit):
#   koshka serve --listen 127.0.0.1:PORT --data-dir TMP --threads 2 --engines kv \
#       --durability always|everysec
# Load, per connection count and mode:
#   koshka bench --server 127.0.0.1:PORT --connections C --threads min(C,2) --keys 100000 \
#       --key-size 32 --value-size 100 --get-ratio $GET_RATIO --pipeline 1 \
#       --duration $DURATION --warmup 1 --json
# fdatasyncs per run: the server's `binlog_fsyncs` counter before and after.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-1 4 16 64 256}
GET_RATIO=${GET_RATIO:-0}
FSYNC_N=${FSYNC_N:-300}
KOSHKA_BIN=${KOSHKA_BIN:-${CARGO_TARGET_DIR:-target}/release/koshka}
WORK_DIR=${WORK_DIR:-/tmp}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -p koshka --bin koshka >&2
fi
koshka_has_serve "$KOSHKA_BIN" || { echo "$KOSHKA_BIN has no 'serve --listen'" >&2; exit 1; }

workdir=$(mktemp -d "$WORK_DIR/koshka-bench-gc.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

# stat PORT NAME: one value of `stats`.
stat() {
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "stats\r\nquit\r\n" >&3; cat <&3' _ "$1" |
        tr -d '\r' | awk -v name="$2" '$2 == name {print $3}'
}

# fsync_probe: prints "mode size median p90 p99 mean rate" lines (see the header).
fsync_probe() {
    python3 - "$workdir" "$FSYNC_N" <<'PY'
import ctypes, os, statistics, sys, time
d, n = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE = 1
# "append": a plain growing file; "preallocated": space reserved first with
# fallocate(FALLOC_FL_KEEP_SIZE), as the binlog reserves its segments, then appended to.
for mode in ("append", "preallocated"):
    for size in (150, 4096):
        path = os.path.join(d, "fsync-probe")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if mode == "preallocated":
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(64 << 20)) != 0:
                sys.exit(f"fallocate: errno {ctypes.get_errno()}")
        buf = b"x" * size
        lat = []
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, buf)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
        rate = n / (time.perf_counter() - start)
        os.close(fd)
        os.unlink(path)
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"{mode}\t{size}\t{statistics.median(lat):.3f}\t{q(0.9):.3f}\t{q(0.99):.3f}\t{statistics.mean(lat):.3f}\t{rate:.0f}")
PY
}

echo "== fdatasync probe in $workdir" >&2
probe=$(fsync_probe)
echo "$probe" >&2

declare -A pid_of=() port_of=()
for mode in always everysec; do
    port=$(free_port)
    "$KOSHKA_BIN" serve --listen "127.0.0.1:$port" --data-dir "$workdir/$mode" --threads 2 \
        --engines kv --durability "$mode" >"$workdir/$mode.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_version "$port" "$pid" 60 >&2 || { cat "$workdir/$mode.log" >&2; exit 1; }
    pid_of[$mode]=$pid
    port_of[$mode]=$port
done

results="$workdir/results.tsv"
: >"$results"
for ((pair = 1; pair <= PAIRS; pair++)); do
    for conns in $CONNS; do
        order=(always everysec)
        ((pair % 2 == 0)) && order=(everysec always)
        threads=$((conns < 2 ? conns : 2))
        for mode in "${order[@]}"; do
            port=${port_of[$mode]}
            before=$(stat "$port" binlog_fsyncs)
            started=$(date +%s.%N)
            timeout $((DURATION + 120)) "$KOSHKA_BIN" bench --server "127.0.0.1:$port" \
                --connections "$conns" --threads "$threads" --keys 100000 --key-size 32 \
                --value-size 100 --get-ratio "$GET_RATIO" --pipeline 1 --duration "$DURATION" \
                --warmup 1 --json >"$workdir/bench.json" 2>&1 || true
            ended=$(date +%s.%N)
            after=$(stat "$port" binlog_fsyncs)
            read -r ops p50 p99 < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_us"]; print(round(r["ops_per_sec"]), round(l["p50"]), round(l["p99"]))' \
                "$workdir/bench.json" 2>/dev/null) || { cat "$workdir/bench.json" >&2; continue; }
            # fdatasyncs per second over the whole run (warm-up included).
            fps=$(awk -v a="$after" -v b="$before" -v s="$started" -v e="$ended" 'BEGIN {printf "%.1f", (a - b) / (e - s)}')
            echo "pair $pair conns $conns $mode: $ops ops/s p50 $p50 p99 $p99 us, $fps fdatasync/s" >&2
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$mode" "$ops" "$p50" "$p99" "$fps" >>"$results"
        done
    done
done

echo "== fdatasync probe again" >&2
probe_after=$(fsync_probe)
echo "$probe_after" >&2

echo
echo "## Group commit: \`always\` vs \`everysec\` by connection count ($(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo
echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), $PAIRS alternating pairs x ${DURATION}s," \
    "get ratio $GET_RATIO, 32 B keys, 100 B values, pipeline 1, data on $(df --output=source "$WORK_DIR" | tail -1)," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "fdatasync probe (plain loop: write(2) N bytes, then fdatasync(2); $FSYNC_N times):"
echo
echo "| when | file | append bytes | median ms | p90 ms | p99 ms | mean ms | fdatasyncs/s (loop) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for when in before after; do
    lines=$probe
    [[ $when == after ]] && lines=$probe_after
    while IFS=$'\t' read -r mode size med p90 p99 mean rate; do
        echo "| $when the runs | $mode | $size | $med | $p90 | $p99 | $mean | $rate |"
    done <<<"$lines"
done
echo
# The bound uses the mean of the two preallocated 150-byte probes (before and after).
latency=$(printf '%s\n%s\n' "$probe" "$probe_after" |
    awk -F'\t' '$1 == "preallocated" && $2 == 150 {sum += $6; n++} END {if (n) printf "%.3f", sum / n}')
python3 - "$results" "$latency" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    conns, mode, ops, p50, p99, fps = line.split()
    if int(conns) not in order:
        order.append(int(conns))
    runs[(int(conns), mode)].append((int(ops), int(p50), int(p99), float(fps)))
latency_ms = float(sys.argv[2])
med = lambda rows, i: statistics.median(r[i] for r in rows) if rows else None
print(f"Medians over the pairs. 'bound' = connections / {latency_ms} ms, the mean fdatasync latency")
print("of the probes on a preallocated file with 150-byte appends (before and after the runs), the")
print("binlog's case: one fdatasync acknowledges at most one waiting set per connection, and")
print("fdatasyncs run back to back. 'sets per fdatasync' = always ops/s / always fdatasyncs/s,")
print("how many sets one fdatasync carried (group commit).")
print()
print("| connections | always ops/s | always p50 / p99 µs | fdatasyncs/s | sets per fdatasync | bound (C / latency) | always / bound | everysec ops/s | always / everysec |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted(order):
    a, e = runs.get((c, "always"), []), runs.get((c, "everysec"), [])
    ao, eo, fps = med(a, 0), med(e, 0), med(a, 3)
    bound = c / (latency_ms / 1000) if latency_ms > 0 else None
    per = f"{ao / fps:.1f}" if ao and fps else "n/a"
    print(f"| {c} | {ao:,.0f} | {med(a, 1):,.0f} / {med(a, 2):,.0f} | {fps:,.0f} | {per} | "
          f"{bound:,.0f} | {ao / bound:.2f} | {eo:,.0f} | **{ao / eo:.2f}×** |")
PY
