#!/usr/bin/env bash
# Global search through the proxy: 8 search nodes (`koshka serve --engines search`, one
# process each, shard i of 8), `koshka proxy` in front with one `engine = "search"` cluster,
# ITEMS items in all (real sentences) written through the proxy, then two-word searches for a
# top 20 sent to the proxy, which asks every shard for the top 20 (a window this small is asked
# whole; larger ones get the split estimate and re-asks when unsure) and merges. Reports the throughput and latency percentiles of ROUNDS runs per connection
# count, and the proxy's fan-out counters. A benchmark, not a test: it asserts nothing.
#
#   scripts/bench-search-proxy.sh                       # 1 M items, 3 rounds of 10 s
#   ITEMS=100000 ROUNDS=1 DURATION=2 scripts/bench-search-proxy.sh   # smoke run
#
# Environment:
#   ITEMS=1000000     items in all (each node holds about ITEMS/8)
#   SHARDS=8          search nodes
#   ROUNDS=3          measured runs per connection count
#   DURATION=10       measured seconds per run (after 1 s of warm-up)
#   CONNECTIONS="1 8" connection counts to measure (closed loop, depth 1)
#   TEXTS=cut         cut = English+Russian fortunes cut to 100 B; ru = whole Russian fortunes
#                     capped at 300 B (see koshka bench --texts)
#   NODE_THREADS=1    worker threads per node
#   PROXY_THREADS=2   proxy worker threads
#   KOSHKA_BIN=target/release/koshka
#
# Nodes: koshka serve --config node<i>.toml (engines ["search"], shard_index i, shard_count
# SHARDS, durability everysec, threads NODE_THREADS) --port search=PORT, fresh data dirs.
# Proxy: koshka proxy --config proxy.toml (printed below) --threads PROXY_THREADS.
# Load:  koshka bench --workload search --server 127.0.0.1:PROXY_PORT --search-through-proxy
#   --search-shards SHARDS --search-limit 20 --items ITEMS --texts T --preload --preload-only
#   --connections 8, then per scenario --connections C --duration DURATION --warmup 1.
# Everything is stopped by PID.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/lib.sh

ITEMS="${ITEMS:-1000000}"
SHARDS="${SHARDS:-8}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-1 8}"
TEXTS="${TEXTS:-cut}"
NODE_THREADS="${NODE_THREADS:-1}"
PROXY_THREADS="${PROXY_THREADS:-2}"
KOSHKA_BIN="${KOSHKA_BIN:-target/release/koshka}"
if [[ ! -x $KOSHKA_BIN ]]; then
    nice -n 19 cargo build --release -p koshka
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

stat_value() {
    local port=$1 group=$2 name=$3
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        if [[ -n $2 ]]; then printf "stats %s\r\n" "$2" >&3; else printf "stats\r\n" >&3; fi
        while IFS= read -r -t 1 line <&3; do
            line=${line%$'"'"'\r'"'"'}
            [[ $line == END ]] && break
            [[ $line == "STAT $3 "* ]] && echo "${line##* }"
        done' _ "$port" "$group" "$name"
}

size_args=()
[[ $TEXTS == ru ]] && size_args=(--text-size 300)

echo "koshka search-through-proxy benchmark: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

node_ports=()
node_pids=()
for ((i = 0; i < SHARDS; i++)); do
    port=$(free_port)
    mkdir -p "$WORK/node$i"
    cat >"$WORK/node$i.toml" <<EOF
[server]
listen = "127.0.0.1:0"
threads = $NODE_THREADS

[storage]
data_dir = "$WORK/node$i"
durability = "everysec"

[engines]
enabled = ["search"]
shard_index = $i
shard_count = $SHARDS
EOF
    "$KOSHKA_BIN" serve --config "$WORK/node$i.toml" --port "search=$port" \
        >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
    node_pids+=($!)
    node_ports+=("$port")
done
for ((i = 0; i < SHARDS; i++)); do
    wait_version "${node_ports[$i]}" "${node_pids[$i]}"
done

proxy_port=$(free_port)
{
    echo "[proxy]"
    echo "get_timeout_ms = 2000"
    echo
    echo "[[cluster]]"
    echo 'name = "search"'
    echo 'engine = "search"'
    echo "listen = \"127.0.0.1:$proxy_port\""
    printf 'shards = ['
    for ((i = 0; i < SHARDS; i++)); do
        ((i > 0)) && printf ', '
        printf '"127.0.0.1:%s"' "${node_ports[$i]}"
    done
    echo ']'
} >"$WORK/proxy.toml"
echo "proxy.toml:"
sed 's/^/    /' "$WORK/proxy.toml"
"$KOSHKA_BIN" proxy --config "$WORK/proxy.toml" --threads "$PROXY_THREADS" \
    >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_version "$proxy_port" "$PROXY_PID"

rss_before=0
for pid in "${node_pids[@]}"; do
    rss_before=$((rss_before + $(rss_kb "$pid")))
done
started=$SECONDS
"$KOSHKA_BIN" bench --workload search --server "127.0.0.1:$proxy_port" --search-through-proxy \
    --search-shards "$SHARDS" --search-limit 20 --items "$ITEMS" --texts "$TEXTS" \
    "${size_args[@]}" --preload --preload-only --connections 8 | grep -E 'texts:|preload:'
rss_after=0
bytes_est=0
for ((i = 0; i < SHARDS; i++)); do
    rss_after=$((rss_after + $(rss_kb "${node_pids[$i]}")))
    per_item=$(stat_value "${node_ports[$i]}" "" search_bytes_per_item)
    items=$(stat_value "${node_ports[$i]}" "" search_items)
    echo "node $i: search_items ${items:-?}, search_bytes_per_item ${per_item:-?}"
done
echo "preload through the proxy: $((SECONDS - started)) s; nodes' VmRSS growth per item" \
    "$(((rss_after - rss_before) * 1024 / ITEMS)) B (VmRSS $rss_before -> $rss_after KiB in all)"

for c in $CONNECTIONS; do
    for ((round = 1; round <= ROUNDS; round++)); do
        "$KOSHKA_BIN" bench --workload search --server "127.0.0.1:$proxy_port" \
            --search-through-proxy --search-shards "$SHARDS" --search-limit 20 \
            --items "$ITEMS" --texts "$TEXTS" "${size_args[@]}" \
            --connections "$c" --duration "$DURATION" --warmup 1 --server-pid "$PROXY_PID" |
            grep -E '^ +search2' | sed "s/^ */$c connections, round $round: /"
    done
done
for name in proxy_search_scatters proxy_search_shard_requests proxy_search_reasks \
    proxy_partial_answers proxy_shard_timeouts; do
    echo "$name $(stat_value "$proxy_port" proxy "$name")"
done
