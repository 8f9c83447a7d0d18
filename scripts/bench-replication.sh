#!/usr/bin/env bash
# Replication benchmarks (docs/BENCHMARKS.md §6): replica lag (local, and 50 ms away through a
# delaying relay), primary write throughput alone / with an async replica / semi-synchronous,
# and failover time (kill -9 of an etcd-coordinated primary, N trials).
#
#   scripts/bench-replication.sh                  # everything, the documented settings
#   WHAT=lag,throughput ROUNDS=5 scripts/bench-replication.sh
#
# Needs etcd (Debian etcd-server; scripts/test.sh installs it). Not part of the test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KOSHKA_BIN=${KOSHKA_BIN:-target/release/koshka}
if [[ -z ${SKIP_BUILD:-} ]]; then cargo build --release -q -p koshka; fi
exec python3 scripts/bench_replication.py --binary "$KOSHKA_BIN" \
    --what "${WHAT:-lag,throughput,failover}" --probes "${PROBES:-1000}" \
    --rounds "${ROUNDS:-5}" --seconds "${SECONDS_PER_ROUND:-5}" --trials "${TRIALS:-20}" \
    --ttl-ms "${TTL_MS:-3000}"
