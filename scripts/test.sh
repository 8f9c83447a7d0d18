#!/usr/bin/env bash
# THE test command of koshka. Works on a fresh Debian 12 machine as root.
#
#   scripts/test.sh
#
# 1. Installs what the tests need if missing: apt packages (memcached, libmemcached-tools for
#    memccapable/memcaslap, php-cli + php-memcached, redis-server, fortunes, fortunes-ru,
#    python3-pip, etcd-server for the failover tests, ffmpeg + nginx-light +
#    libimage-exiftool-perl for the media tests), then the Python clients pymemcache and redis.
# 2. cargo fmt --check; cargo clippy --workspace --all-targets -- -D warnings;
#    cargo test --workspace --release (release, so crash and compat tests run fast).
# 3. scripts/compat.sh: memccapable, pymemcache and PHP memcached against `koshka serve`,
#    then `scripts/compat.sh --through-proxy`: the same suites through `koshka proxy` in front
#    of three nodes.
# 4. scripts/conformance.sh: memcached's own t/*.t files against `koshka serve`, when
#    ../shared/conformance is present (skipped otherwise).
# Ends with one line `N passed, N failed` (cargo tests + compat checks, direct and through the
# proxy + conformance files + failed steps) and exits non-zero if anything failed. Uses the
# repository's own target/ directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
unset CARGO_TARGET_DIR
export CARGO_TERM_COLOR=never

APT_PACKAGES=(memcached libmemcached-tools php-cli php-memcached redis-server fortunes fortunes-ru faketime etcd-server
    ffmpeg nginx-light libimage-exiftool-perl
    python3-pip)
PIP_PACKAGES=(pymemcache redis)

install_dependencies() {
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} > 0)); then
        echo "== installing apt packages: ${missing[*]}"
        local sudo=""
        if ((EUID != 0)); then sudo="sudo"; fi
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${APT_PACKAGES[@]}"
    fi
    if ! python3 -c 'import pymemcache, redis' 2>/dev/null; then
        echo "== installing python packages: ${PIP_PACKAGES[*]}"
        python3 -m pip install -q "${PIP_PACKAGES[@]}" ||
            python3 -m pip install -q --break-system-packages "${PIP_PACKAGES[@]}"
    fi
}

install_dependencies

logdir=$(mktemp -d /tmp/koshka-test.XXXXXX)
trap 'rm -rf "$logdir"' EXIT
failed_steps=()

# step NAME CMD...: runs a step, keeps going on failure, remembers the failure.
step() {
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@"; then
        echo "== $name FAILED" >&2
        failed_steps+=("$name")
    fi
}

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# cargo test's own `test result:` lines go to the terminal and to a log for the summary.
step test bash -c 'set -o pipefail; cargo test --workspace --release 2>&1 | tee "$1"' _ \
    "$logdir/cargo-test.log"
# `cargo test --release` built target/release/koshka for the integration tests; reuse it.
step compat bash -c 'set -o pipefail; KOSHKA_BIN=target/release/koshka scripts/compat.sh 2>&1 |
    tee "$1"' _ "$logdir/compat.log"
step compat-proxy bash -c 'set -o pipefail; KOSHKA_BIN=target/release/koshka scripts/compat.sh \
    --through-proxy 2>&1 | tee "$1"' _ "$logdir/compat-proxy.log"
step conformance bash -c 'set -o pipefail; KOSHKA_BIN=target/release/koshka scripts/conformance.sh 2>&1 |
    tee "$1"' _ "$logdir/conformance.log"

# Sum cargo's `test result: ok. N passed; M failed; …` lines and compat's final line.
read -r cargo_passed cargo_failed < <(awk '
    /^test result:/ { for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;?$/) p += $(i - 1); if ($(i) ~ /^failed;?$/) f += $(i - 1) } }
    END { print p + 0, f + 0 }' "$logdir/cargo-test.log" 2>/dev/null || echo "0 0")
# counts PREFIX LOG: prints "PASSED FAILED" from the last `PREFIX: N passed, M failed` line of
# LOG ("0 0" when there is none).
counts() {
    local line
    line=$(grep -Eo "^$1: [0-9]+ passed, [0-9]+ failed" "$2" 2>/dev/null | tail -1 || true)
    if [[ -n $line ]]; then
        sed -E 's/^[^:]*: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/' <<<"$line"
    else
        echo "0 0"
    fi
}
read -r compat_passed compat_failed < <(counts compat "$logdir/compat.log")
read -r proxy_passed proxy_failed < <(counts compat-proxy "$logdir/compat-proxy.log")
read -r conformance_passed conformance_failed < <(counts conformance "$logdir/conformance.log")

passed=$((cargo_passed + compat_passed + proxy_passed + conformance_passed))
failed=$((cargo_failed + compat_failed + proxy_failed + conformance_failed))
# A failed step with no failed test counted (fmt, clippy, a build error) still counts once.
for name in "${failed_steps[@]}"; do
    case $name in
        test) ((cargo_failed > 0)) || failed=$((failed + 1)) ;;
        compat) ((compat_failed > 0)) || failed=$((failed + 1)) ;;
        compat-proxy) ((proxy_failed > 0)) || failed=$((failed + 1)) ;;
        conformance) ((conformance_failed > 0)) || failed=$((failed + 1)) ;;
        *) failed=$((failed + 1)) ;;
    esac
done
echo "== summary: cargo tests $cargo_passed passed, $cargo_failed failed;" \
    "compat $compat_passed passed, $compat_failed failed;" \
    "compat through the proxy $proxy_passed passed, $proxy_failed failed;" \
    "conformance $conformance_passed passed, $conformance_failed failed;" \
    "failed steps: ${failed_steps[*]:-none}"
echo "$passed passed, $failed failed"
if ((${#failed_steps[@]} > 0)); then
    exit 1
fi
