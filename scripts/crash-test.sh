#!/usr/bin/env bash
# The long crash test: crates/koshka/tests/crash.rs with many kill -9 cycles per durability mode.
#
#   scripts/crash-test.sh                 # 50 cycles for `always`, then 50 for `everysec`
#   CYCLES=200 scripts/crash-test.sh      # more cycles
#   KOSHKA_SEED=123 scripts/crash-test.sh # rerun a seed (printed by every run)
#
# Each mode runs as its own `cargo test --release` invocation (one after the other, so the
# kills are not slowed by the other mode's load). Prints each mode's CRASH-SUMMARY line
# (cycles, seed, acknowledged operations, operations in flight at the kills, violations, wall
# time) and a final summary; exits non-zero if any mode found a violation. Full output goes to
# $LOG_DIR (default target/crash-test-logs). Honours CARGO_TARGET_DIR.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

CYCLES=${CYCLES:-50}
LOG_DIR=${LOG_DIR:-${CARGO_TARGET_DIR:-target}/crash-test-logs}
mkdir -p "$LOG_DIR"

echo "building (release)..."
if ! cargo test --release -p koshka --test crash --no-run >"$LOG_DIR/build.log" 2>&1; then
    tail -n 50 "$LOG_DIR/build.log"
    echo "crash-test: build failed"
    exit 2
fi
# Run the built test binary directly, so both modes test the same build even if sources change.
test_bin=$(sed -n 's/.*Executable tests\/crash.rs (\(.*\)).*/\1/p' "$LOG_DIR/build.log" | tail -n 1)
if [[ ! -x $test_bin ]]; then
    echo "crash-test: cannot find the test binary in $LOG_DIR/build.log"
    exit 2
fi
echo "test binary: $test_bin ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

failed=0
summaries=()
started=$SECONDS
for mode in always everysec; do
    log="$LOG_DIR/crash-$mode.log"
    echo "crash test: $mode, $CYCLES cycles (log: $log)"
    mode_started=$SECONDS
    KOSHKA_CRASH_CYCLES=$CYCLES timeout $((CYCLES * 60 + 600)) \
        "$test_bin" --exact "crash_$mode" --nocapture >"$log" 2>&1
    status=$?
    summary=$(grep -h '^CRASH-SUMMARY' "$log" | tail -n 1)
    seeds=$(grep -ho 'seed [0-9]* (rerun' "$log" | head -n 1)
    if [[ $status -ne 0 ]]; then
        failed=$((failed + 1))
        echo "  FAILED (exit $status) after $((SECONDS - mode_started)) s; $seeds"
        grep -h 'VIOLATION\|panicked' "$log" | head -n 20
    fi
    echo "  ${summary:-no summary line (see $log)}"
    summaries+=("$mode: ${summary:-none} exit=$status")
done

echo
echo "crash-test summary ($CYCLES cycles per mode, $((SECONDS - started)) s wall):"
for s in "${summaries[@]}"; do
    echo "  $s"
done
if [[ $failed -ne 0 ]]; then
    echo "crash-test: $failed mode(s) FAILED"
    exit 1
fi
echo "crash-test: all modes passed"
