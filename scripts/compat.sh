#!/usr/bin/env bash
# Compatibility suite: unmodified memcached clients against `koshka serve`.
#
#   scripts/compat.sh                      # build target/release/koshka, test it
#   scripts/compat.sh --against-memcached  # run the same suites against the real memcached
#
# Steps: start the server on a free loopback port with a temp data dir, wait for `version`,
# then run
#   memccapable -h 127.0.0.1 -p PORT -a            (libmemcached's ASCII conformance checker)
#   python3 tests/compat/pymemcache_test.py --port PORT
#   php tests/compat/php_memcached_test.php PORT
# and stop the server by PID. Prints `compat: N passed, M failed` (checks summed over the
# suites) and exits non-zero if any check or suite failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

target=koshka
case "${1:-}" in
    --against-memcached) target=memcached ;;
    "") ;;
    *) echo "usage: $0 [--against-memcached]" >&2; exit 2 ;;
esac

workdir=$(mktemp -d /tmp/koshka-compat.XXXXXX)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then stop_pid "$server_pid"; fi
    rm -rf "$workdir"
}
trap cleanup EXIT

port=$(free_port)
if [[ $target == koshka ]]; then
    # scripts/test.sh passes the binary `cargo test --release` just built (KOSHKA_BIN), so the
    # workspace is not compiled a second time with another feature set.
    bin=${KOSHKA_BIN:-}
    if [[ -z $bin ]]; then
        echo "== building target/release/koshka"
        cargo build --release -p koshka --bin koshka
        bin=target/release/koshka
    fi
    if ! koshka_has_serve "$bin"; then
        echo "compat: $bin cannot run 'serve'" >&2
        echo "compat: 0 passed, 1 failed"
        exit 1
    fi
    # Ephemeral ports for every engine; the server prints them ("<engine> listening on").
    "$bin" serve --listen "127.0.0.1:0" --data-dir "$workdir/data" >"$workdir/server.log" 2>&1 &
    server_pid=$!
    engine_port() {
        sed -nE "s/^koshka: $1 listening on 127\.0\.0\.1:([0-9]+)$/\1/p" "$workdir/server.log"
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
if [[ $target == koshka ]]; then
    run_counted engines-pymemcache python3 tests/compat/engines_pymemcache.py \
        --port-messages "$(engine_port messages)" --port-wall "$(engine_port wall)" \
        --port-friends "$(engine_port friends)"
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "server died during the suites" >&2
    cat "$workdir/server.log" >&2
    total_failed=$((total_failed + 1))
    failed_suites+=("server-alive")
fi

echo "== compat suites against $target"
echo "compat: $total_passed passed, $total_failed failed"
if ((${#failed_suites[@]} > 0)); then
    echo "failed suites: ${failed_suites[*]}" >&2
    exit 1
fi
