#!/usr/bin/env bash
# Compatibility suite: unmodified memcached clients against `koshka serve`.
#
#   scripts/compat.sh                      # build target/release/koshka, test it
#   scripts/compat.sh --against-memcached  # run the same suites against the real memcached
#   scripts/compat.sh --through-proxy      # the same suites through `koshka proxy` in front
#                                          # of PROXY_SHARDS (default 3) nodes
#
# Steps: start the server on a free loopback port with a temp data dir, wait for `version`,
# then run
#   memccapable -h 127.0.0.1 -p PORT -a            (libmemcached's ASCII conformance checker)
#   python3 tests/compat/pymemcache_test.py --port PORT
#   php tests/compat/php_memcached_test.php PORT
#   python3 tests/compat/engines_pymemcache.py --port-messages P --port-wall P --port-friends P
#                                            (koshka only: the compiled-key engines)
# and stop the server by PID. Prints `compat: N passed, M failed` (checks summed over the
# suites) and exits non-zero if any check or suite failed.
#
# --through-proxy starts PROXY_SHARDS `koshka serve` nodes on ephemeral ports, node n holding
# shard n of PROXY_SHARDS, then `koshka proxy --config proxy.toml` with one cluster per engine
# over them (kv: ketama; the others: by owner id), runs the same suites against the proxy's
# ports (the engines suite with `--shards PROXY_SHARDS`), checks that every node's kv served
# reads and writes (`proxy-spread`), and stops the proxy, then the nodes, by PID. The suites
# see one server: the proxy splits multi-gets, sums `stats` over the shards, writes
# cross-shard sends, friendships and reposts. Its final line is `compat-proxy: N passed, M failed`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

target=koshka
summary=compat
case "${1:-}" in
    --against-memcached) target=memcached ;;
    --through-proxy) target=proxy summary=compat-proxy ;;
    "") ;;
    *) echo "usage: $0 [--against-memcached | --through-proxy]" >&2; exit 2 ;;
esac
# Nodes behind the proxy in --through-proxy mode: enough that the suites' multi-gets span
# several shards.
PROXY_SHARDS=${PROXY_SHARDS:-3}

workdir=$(mktemp -d /tmp/koshka-compat.XXXXXX)
server_pid=""
node_pids=()
cleanup() {
    if [[ -n $server_pid ]]; then stop_pid "$server_pid"; fi
    local pid
    for pid in "${node_pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$workdir"
}
trap cleanup EXIT

# koshka_bin: sets `bin`, the binary to test. scripts/test.sh passes the one `cargo test
# --release` just built (KOSHKA_BIN), so the workspace is not compiled a second time with
# another feature set.
koshka_bin() {
    bin=${KOSHKA_BIN:-}
    if [[ -z $bin ]]; then
        echo "== building target/release/koshka"
        cargo build --release -p koshka --bin koshka
        bin=target/release/koshka
    fi
    if ! koshka_has_serve "$bin"; then
        echo "$summary: $bin cannot run 'serve'" >&2
        echo "$summary: 0 passed, 1 failed"
        exit 1
    fi
}

port=$(free_port)
if [[ $target == proxy ]]; then
    koshka_bin
    engines=(kv messages wall friends)
    declare -A shards_of=() proxy_port_of=()
    node_ports=()
    for ((n = 0; n < PROXY_SHARDS; n++)); do
        # Node n holds shard n of PROXY_SHARDS: the compiled-key engines check that every
        # owner id they are asked about lives there.
        printf '[engines]\nshard_index = %d\nshard_count = %d\n' "$n" "$PROXY_SHARDS" \
            >"$workdir/node$n.toml"
        "$bin" serve --config "$workdir/node$n.toml" --listen "127.0.0.1:0" --threads 1 \
            --data-dir "$workdir/node$n" >"$workdir/node$n.log" 2>&1 &
        node_pids+=($!)
    done
    for ((n = 0; n < PROXY_SHARDS; n++)); do
        for ((i = 0; i < 600; i++)); do
            [[ -n $(reported_port "$workdir/node$n.log" friends) ]] && break
            kill -0 "${node_pids[n]}" 2>/dev/null || break
            sleep 0.05
        done
        node_port=$(reported_port "$workdir/node$n.log" kv)
        if [[ -z $node_port ]] || ! wait_version "$node_port" "${node_pids[n]}" 60; then
            echo "node $n did not start" >&2
            cat "$workdir/node$n.log" >&2
            exit 1
        fi
        node_ports+=("$node_port")
        for engine in "${engines[@]}"; do
            shards_of[$engine]+="\"127.0.0.1:$(reported_port "$workdir/node$n.log" "$engine")\","
        done
        echo "== node $n (shard $n of $PROXY_SHARDS) kv on 127.0.0.1:$node_port (pid ${node_pids[n]})"
    done
    # One cluster per engine over the nodes: plain kv keys placed by ketama, compiled keys by
    # owner id (docs/proxy.md). The twin queue lives in memory.
    {
        printf '[proxy]\nthreads = 2\n'
        for engine in "${engines[@]}"; do
            if [[ $engine == kv ]]; then
                proxy_port_of[$engine]=$port
            else
                proxy_port_of[$engine]=$(free_port)
            fi
            printf '\n[[cluster]]\nname = "%s"\nengine = "%s"\nlisten = "127.0.0.1:%s"\n' \
                "$engine" "$engine" "${proxy_port_of[$engine]}"
            printf 'shards = [%s]\n' "${shards_of[$engine]%,}"
        done
    } >"$workdir/proxy.toml"
    "$bin" proxy --config "$workdir/proxy.toml" >"$workdir/server.log" 2>&1 &
    server_pid=$!
    engine_port() {
        echo "${proxy_port_of[$1]}"
    }
elif [[ $target == koshka ]]; then
    koshka_bin
    # Ephemeral ports for every engine; the server prints them ("<engine> listening on").
    "$bin" serve --listen "127.0.0.1:0" --data-dir "$workdir/data" >"$workdir/server.log" 2>&1 &
    server_pid=$!
    engine_port() {
        reported_port "$workdir/server.log" "$1"
    }
    for ((i = 0; i < 600; i++)); do
        [[ -n $(engine_port friends) ]] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    port=$(engine_port kv)
    if [[ -z $port ]]; then
        echo "koshka did not report its ports" >&2
        cat "$workdir/server.log" >&2
        exit 1
    fi
else
    # shellcheck disable=SC2046
    memcached $(memcached_args "$port") -m 1024 -t 2 >"$workdir/server.log" 2>&1 &
    server_pid=$!
fi
if ! wait_version "$port" "$server_pid" 60; then
    cat "$workdir/server.log" >&2
    exit 1
fi
echo "== $target running on 127.0.0.1:$port (pid $server_pid)"

total_passed=0
total_failed=0
failed_suites=()

# record NAME PASSED FAILED STATUS: adds a suite's counts; a non-zero status or a suite that
# ran no check counts as a failure even if its counts look clean.
record() {
    local name=$1 passed=$2 failed=$3 status=$4
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    if ((status != 0 || failed > 0 || passed == 0)); then
        failed_suites+=("$name")
        if ((failed == 0)); then total_failed=$((total_failed + 1)); fi
    fi
    echo "-- $name: $passed passed, $failed failed (exit $status)"
}

echo "== memccapable -a"
status=0
timeout 180 memccapable -h 127.0.0.1 -p "$port" -a >"$workdir/memccapable.log" 2>&1 || status=$?
cat "$workdir/memccapable.log"
passed=$(grep -c '\[pass\]' "$workdir/memccapable.log" || true)
failed=$(grep -Eci '\[(fail|failed)\]' "$workdir/memccapable.log" || true)
if ((status == 0)) && ! grep -q 'All tests passed' "$workdir/memccapable.log"; then status=1; fi
record memccapable "$passed" "$failed" "$status"

# run_counted NAME CMD...: runs a suite that ends with `<name>: N passed, M failed`.
run_counted() {
    local name=$1 status=0 line
    shift
    echo "== $name"
    timeout 300 "$@" >"$workdir/$name.log" 2>&1 || status=$?
    cat "$workdir/$name.log"
    line=$(grep -Eo '[0-9]+ passed, [0-9]+ failed' "$workdir/$name.log" | tail -1 || true)
    local passed=0 failed=0
    if [[ -n $line ]]; then
        passed=${line%% passed*}
        failed=${line#*passed, }
        failed=${failed%% failed*}
    fi
    record "$name" "$passed" "$failed" "$status"
}

run_counted pymemcache python3 tests/compat/pymemcache_test.py --port "$port"
run_counted php-memcached php tests/compat/php_memcached_test.php "$port"
if [[ $target != memcached ]]; then
    run_counted engines-pymemcache python3 tests/compat/engines_pymemcache.py \
        --port-messages "$(engine_port messages)" --port-wall "$(engine_port wall)" \
        --port-friends "$(engine_port friends)" \
        --shards "$(if [[ $target == proxy ]]; then echo "$PROXY_SHARDS"; else echo 1; fi)"
fi

# node_stat PORT NAME: the value of one `stats` line of the server on PORT.
node_stat() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "stats\r\n" >&3
        while IFS= read -r -t 2 line <&3; do
            line=${line%$'"'"'\r'"'"'}
            [[ $line == END ]] && break
            if [[ $line == "STAT $2 "* ]]; then echo "${line##* }"; fi
        done' _ "$1" "$2" 2>/dev/null || true
}

if [[ $target == proxy ]]; then
    # The kv suites only prove something about the proxy if their keys were spread: every
    # node must have served reads and writes.
    echo "== proxy-spread"
    spread_failed=0
    for ((n = 0; n < ${#node_ports[@]}; n++)); do
        gets=$(node_stat "${node_ports[n]}" cmd_get)
        sets=$(node_stat "${node_ports[n]}" cmd_set)
        echo "node $n kv: cmd_get ${gets:-?}, cmd_set ${sets:-?}"
        if ! ((${gets:-0} > 0 && ${sets:-0} > 0)); then spread_failed=1; fi
    done
    record proxy-spread $((1 - spread_failed)) "$spread_failed" 0
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "server died during the suites" >&2
    cat "$workdir/server.log" >&2
    total_failed=$((total_failed + 1))
    failed_suites+=("server-alive")
fi
for ((n = 0; n < ${#node_pids[@]}; n++)); do
    if ! kill -0 "${node_pids[n]}" 2>/dev/null; then
        echo "kv node $n died during the suites" >&2
        cat "$workdir/node$n.log" >&2
        total_failed=$((total_failed + 1))
        failed_suites+=("node$n-alive")
    fi
done

echo "== compat suites against $target"
echo "$summary: $total_passed passed, $total_failed failed"
if ((${#failed_suites[@]} > 0)); then
    echo "failed suites: ${failed_suites[*]}" >&2
    exit 1
fi
