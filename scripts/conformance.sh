#!/usr/bin/env bash
# memcached's own text-protocol tests (t/*.t from memcached) against `koshka serve`.
#
#   scripts/conformance.sh [TEST...]      # every file, or the named ones (e.g. getset issue_70)
#   VERBOSE=1 scripts/conformance.sh ...  # show the failing assertions
#
# Runs ../shared/conformance/memcached/run.sh (relative to the repository root; skipped with a
# message when absent), which starts one `koshka serve --engines kv` per file with koshka's
# defaults. A file that needs a setting other than the defaults runs through a two-line shim
# that execs the binary with that setting added; SETTINGS below names each such file with the
# setting and why (docs/conformance.md has the full list of differences), and the output says
# which files ran that way.
#
# Uses KOSHKA_BIN if set (scripts/test.sh passes the binary `cargo test --release` built),
# otherwise builds target/release/koshka. Ends with `conformance: N passed, M failed` (files)
# and exits non-zero if any file failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runner=../shared/conformance/memcached/run.sh
if [[ ! -x $runner ]]; then
    echo "conformance: skipped: $runner is absent (memcached's tests live outside the repository)"
    exit 0
fi

# Files run with a setting added to `koshka serve`, and why.
declare -A SETTINGS=(
    [maxconns]="--max-connections 1024"
)
declare -A REASONS=(
    [maxconns]="memcached's default connection limit (-c 1024); koshka's default is 4096, so the test's 1024 sockets never reach it"
)

bin=${KOSHKA_BIN:-}
if [[ -z $bin ]]; then
    echo "== building target/release/koshka"
    cargo build --release -p koshka --bin koshka
    bin=target/release/koshka
fi
bin=$(realpath "$bin")

tests=("$@")
if ((${#tests[@]} == 0)); then
    for file in "$(dirname "$runner")"/t/*.t; do
        tests+=("$(basename "$file" .t)")
    done
fi
plain=()
special=()
for name in "${tests[@]}"; do
    if [[ -n ${SETTINGS[$name]:-} ]]; then special+=("$name"); else plain+=("$name"); fi
done

workdir=$(mktemp -d /tmp/koshka-conformance.XXXXXX)
trap 'rm -rf "$workdir"' EXIT
log=$workdir/log
: >"$log"

# The runner exits non-zero when a file fails; its PASS/FAIL lines are what count here.
if ((${#plain[@]} > 0)); then
    echo "== memcached t/ with koshka's defaults: ${plain[*]}"
    "$runner" "$bin" "${plain[@]}" | tee -a "$log" || true
fi
for name in "${special[@]}"; do
    shim=$workdir/koshka-$name
    printf '#!/bin/sh\nexec %q "$@" %s\n' "$bin" "${SETTINGS[$name]}" >"$shim"
    chmod +x "$shim"
    echo "== memcached t/$name.t with koshka serve ${SETTINGS[$name]}: ${REASONS[$name]}"
    "$runner" "$shim" "$name" | tee -a "$log" || true
done

passed=$(grep -c '^PASS ' "$log" || true)
failed=$(grep -c '^FAIL ' "$log" || true)
for name in "${special[@]}"; do
    echo "conformance: $name ran with ${SETTINGS[$name]}"
done
echo "conformance: $passed passed, $failed failed (memcached t/ files, ${#tests[@]} run)"
((failed == 0 && passed == ${#tests[@]}))
