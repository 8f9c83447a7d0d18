#!/usr/bin/env bash
# Runs every koshka fuzz target for a short time (default 20 s each), after replaying the
# regression inputs in fuzz/regressions/<target>/. See docs/fuzzing.md.
#
#   fuzz/smoke.sh            # ~20 s per target
#   fuzz/smoke.sh 180        # 3 minutes per target
#   TARGETS="proto_text" fuzz/smoke.sh 600
#   KOSHKA_FUZZ_STRICT=1 fuzz/smoke.sh   # known bugs crash again (check a fix)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks the nightly flags cargo-fuzz uses. Exits non-zero if any target crashed; crash
# inputs land in fuzz/artifacts/<target>/, logs in fuzz/logs/<target>.log.
set -uo pipefail

SECS="${1:-20}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-fuzz}"
TARGETS="${TARGETS:-proto_text proto_reply keys_messages keys_friends keys_lists keys_news keys_search binlog_reader kv_snapshot}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
mkdir -p fuzz/logs

cargo fuzz build >/dev/null || { echo "cargo fuzz build failed" >&2; exit 2; }

failed=()
for t in $TARGETS; do
    bin="$CARGO_TARGET_DIR/$TRIPLE/release/$t"
    if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        if ! "$bin" -rss_limit_mb=2048 fuzz/regressions/"$t"/* >"fuzz/logs/$t.regressions.log" 2>&1; then
            echo "$t: a regression input crashes (see fuzz/logs/$t.regressions.log)"
            failed+=("$t(regressions)")
        fi
    fi
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 \
        -dict="fuzz/dicts/$t.dict" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/logs/$t.log")
    cov=$(grep -o 'cov: [0-9]*' "fuzz/logs/$t.log" | tail -1)
    ft=$(grep -o 'ft: [0-9]*' "fuzz/logs/$t.log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        echo "$t: CRASH after ${execs:-?} executions (see fuzz/logs/$t.log, fuzz/artifacts/$t/)"
        failed+=("$t")
    else
        echo "$t: ok, ${SECS}s, ${execs:-?} executions, ${cov:-cov: ?}, ${ft:-ft: ?}"
    fi
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
