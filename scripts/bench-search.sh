#!/usr/bin/env bash
# Search benchmark: one search node holding one shard of an 8-shard cluster (1 M items / 8 =
# 125 000 items of real sentences), two-word searches at the per-shard limit a proxy asks
# for a top 20. Reports, per text kind, the memory per item (the engine's own estimate,
# `search_bytes_per_item`, and the node's VmRSS growth over the preload divided by the
# items) and, per connection count, the throughput and latency percentiles of ROUNDS runs.
# A benchmark, not a test: it asserts nothing.
#
#   scripts/bench-search.sh                   # 3 rounds of 10 s per scenario
#   ROUNDS=1 DURATION=2 scripts/bench-search.sh   # smoke run
#
# Environment:
#   ROUNDS=3        measured runs per scenario (medians are what docs/BENCHMARKS.md quotes)
#   DURATION=10     measured seconds per run (after 1 s of warm-up)
#   ITEMS=125000    items preloaded on the node
#   CONNECTIONS="1 8"  connection counts to measure (closed loop, depth 1)
#   TEXTS="cut ru"  text kinds: cut = English+Russian fortunes cut to 100 B; ru = whole
#                   Russian fortunes capped at 300 B (see koshka bench --texts)
#   KOSHKA_BIN=target/release/koshka
#
# Server: koshka serve --engines search --threads 2 --listen 127.0.0.1:0 --port search=PORT (fresh data dir,
# durability everysec), stopped by PID.
# Load: koshka bench --workload search --server 127.0.0.1:PORT --items $ITEMS
#   --search-shards 8 --search-limit 20 --texts T [--text-size 300] --preload --preload-only
#   --connections 8, then per scenario --connections C --duration $DURATION --warmup 1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/lib.sh

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
ITEMS="${ITEMS:-125000}"
CONNECTIONS="${CONNECTIONS:-1 8}"
TEXTS="${TEXTS:-cut ru}"
KOSHKA_BIN="${KOSHKA_BIN:-target/release/koshka}"
if [[ ! -x $KOSHKA_BIN ]]; then
    nice -n 19 cargo build --release -p koshka
fi

WORK="$(mktemp -d)"
PID=""
cleanup() {
    [[ -n $PID ]] && stop_pid "$PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

stat_value() {
    local port=$1 name=$2
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "stats\r\n" >&3
        while IFS= read -r -t 1 line <&3; do
            line=${line%$'"'"'\r'"'"'}
            [[ $line == END ]] && break
            [[ $line == "STAT $2 "* ]] && echo "${line##* }"
        done' _ "$port" "$name"
}

echo "koshka search benchmark: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for texts in $TEXTS; do
    size_args=()
    [[ $texts == ru ]] && size_args=(--text-size 300)
    port=$(free_port)
    rm -rf "$WORK/data"
    "$KOSHKA_BIN" serve --engines search --threads 2 --listen 127.0.0.1:0 --port "search=$port" \
        --data-dir "$WORK/data" >"$WORK/serve.log" 2>&1 &
    PID=$!
    wait_version "$port" "$PID"
    before=$(rss_kb "$PID")
    "$KOSHKA_BIN" bench --workload search --server "127.0.0.1:$port" --items "$ITEMS" \
        --search-shards 8 --search-limit 20 --texts "$texts" "${size_args[@]}" \
        --preload --preload-only --connections 8 | grep -E 'texts:|preload:'
    after=$(rss_kb "$PID")
    echo "texts $texts: search_bytes_per_item $(stat_value "$port" search_bytes_per_item)," \
        "VmRSS growth per item $(((after - before) * 1024 / ITEMS)) B" \
        "(VmRSS $before -> $after KiB), stems $(stat_value "$port" search_stems)," \
        "postings $(stat_value "$port" search_postings)"
    for c in $CONNECTIONS; do
        for ((round = 1; round <= ROUNDS; round++)); do
            "$KOSHKA_BIN" bench --workload search --server "127.0.0.1:$port" --items "$ITEMS" \
                --search-shards 8 --search-limit 20 --texts "$texts" "${size_args[@]}" \
                --connections "$c" --duration "$DURATION" --warmup 1 --server-pid "$PID" |
                grep -E '^ +search2' | sed "s/^ */texts $texts, $c connections, round $round: /"
        done
    done
    stop_pid "$PID"
    PID=""
done
