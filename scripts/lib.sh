# Shared helpers for koshka's scripts. Source it; it defines functions only.
#
# Servers are started on free loopback ports, waited for with a bounded `version` poll (no
# fixed sleeps), and stopped by PID (never by name).

# free_port: prints a loopback TCP port that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# probe_version PORT: succeeds if 127.0.0.1:PORT answers `version` with `VERSION ...`.
probe_version() {
    local port=$1
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "version\r\n" >&3
        IFS= read -r -t 1 line <&3 || exit 1
        [[ $line == VERSION* ]]' _ "$port" 2>/dev/null
}

# wait_version PORT PID [SECONDS]: polls until the server answers `version`; fails if the
# process PID exits or SECONDS (default 30) pass.
wait_version() {
    local port=$1 pid=$2 seconds=${3:-30}
    local deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server (pid $pid) exited before answering version on port $port" >&2
            return 1
        fi
        if probe_version "$port"; then
            return 0
        fi
        sleep 0.05
    done
    echo "server (pid $pid) did not answer version on port $port within ${seconds}s" >&2
    return 1
}

# stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL. Only ever the PID we started.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# memcached_args PORT: the arguments for the reference memcached (root needs -u).
memcached_args() {
    echo "-l 127.0.0.1 -p $1 -U 0 -u root"
}

# koshka_has_serve BIN: succeeds if BIN implements `serve --listen`.
koshka_has_serve() {
    local bin=$1
    [[ -x $bin ]] && timeout 10 "$bin" serve --help 2>&1 | grep -q -- '--listen'
}

# reported_port LOG ENGINE: the port a node printed for ENGINE ("<engine> listening on").
reported_port() {
    sed -nE "s/^koshka: $2 listening on 127\.0\.0\.1:([0-9]+)$/\1/p" "$1"
}
