#!/usr/bin/env bash
# koshka media vs nginx with millions of small files: random reads where the kernel's page,
# inode and dentry caches no longer hold the data set. A benchmark, not a test, and not run in
# CI: at the default N it writes ~40 GB and runs for an hour. It needs root (drop_caches).
#
#   scripts/bench-media-5m.sh                          # 5 000 000 files, 3 rounds
#   N=20000 ROUNDS=1 DURATION=5 scripts/bench-media-5m.sh   # smoke run
#
# Environment:
#   N=5000000        files (random bytes, SIZE_MIN..SIZE_MAX, seeded)
#   SIZE_MIN=1024 SIZE_MAX=3072
#   ROUNDS=3         cold rounds; each runs both targets, the order alternating by round
#   WARM_ROUNDS=2    warm rounds (caches not dropped, each target right after its own
#                    unmeasured warm-up run of DURATION seconds)
#   DURATION=30      seconds per wrk run
#   CONNECTIONS=64   wrk connections (wrk -t2, --timeout 10s)
#   UPLOADERS=4      loader processes (each writes its share of nginx's files and uploads the
#                    same bytes to koshka over one keep-alive connection, 32 requests pipelined;
#                    run under nice -n 19 ionice -c3, the machine is shared)
#   WORK=            directory for the data (default: a new /tmp/koshka-bench-5m.XXXXXX)
#   KEEP=0           1 keeps the data directory (default: removed at exit, it is huge)
#   WORK=DIR KEEP=1 of an earlier run: the loaded data is reused (servers restarted on it;
#                    koshka's start-up scan of its volumes is timed)
#   KOSHKA_BIN=target/release/koshka (built if it is the default)
#
# Layout: nginx's root holds files/<md5(i)[0:2]>/<md5(i)[2:4]>/<i>.bin (65 536 hashed
# directories, ~76 files each at 5 M, as a real deployment spreads them); koshka media holds
# the same bytes uploaded with POST /upload into two data directories (--volume-size default,
# 4 GiB volumes). Before every cold run: `sync; echo 3 > /proc/sys/vm/drop_caches` (page
# cache, dentries and inodes), so each read starts from the disk the way it does once the
# data set is many times RAM. The wrk script picks uniformly random paths from the full list:
#   wrk -t2 -c64 -d${DURATION}s --timeout 10s --latency -s reads.lua http://127.0.0.1:PORT
# nginx: nginx -c nginx.conf -p PREFIX -g 'daemon off;' (worker_processes 2, access_log off,
#   sendfile on, open_file_cache max=10000 (below the workers' descriptor limit:
#   with max=20000 and ulimit -n 20000 nginx failed with EMFILE), worker_rlimit_nofile 65536). koshka: koshka media serve --data-dir D1
#   --data-dir D2 --http 127.0.0.1:PORT --keys 127.0.0.1:PORT (2 HTTP threads on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

N=${N:-5000000}
SIZE_MIN=${SIZE_MIN:-1024}
SIZE_MAX=${SIZE_MAX:-3072}
ROUNDS=${ROUNDS:-3}
WARM_ROUNDS=${WARM_ROUNDS:-2}
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-64}
UPLOADERS=${UPLOADERS:-4}
KEEP=${KEEP:-0}
KOSHKA_BIN=${KOSHKA_BIN:-target/release/koshka}
if ((EUID != 0)); then
    echo "needs root: it drops the kernel's caches before every cold run" >&2
    exit 1
fi
if [[ $KOSHKA_BIN == target/release/koshka ]]; then
    nice -n 19 cargo build --release -q -p koshka
fi

if [[ -n ${WORK:-} ]]; then
    work=$WORK
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/koshka-bench-5m.XXXXXX)
fi
# Disk: nginx rounds every file up to a 4 KiB block; koshka stores size + 40-byte header,
# padded to 8, twice.
need_kb=$(((N * (4096 + 2 * ((SIZE_MIN + SIZE_MAX) / 2 + 48))) / 1024 + N / 10))
free_kb=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
reuse=0
if [[ -s $work/media-paths.txt && -s $work/nginx-paths.txt ]]; then
    reuse=1
    need_kb=0
fi
echo "== $N files of $SIZE_MIN-$SIZE_MAX bytes in $work: needs ~$((need_kb / 1048576)) GiB, $((free_kb / 1048576)) GiB free"
if ((need_kb + 4 * 1048576 > free_kb)); then
    echo "not enough disk space (keeping 4 GiB spare); lower N" >&2
    exit 1
fi

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        stop_pid "$p" 2>/dev/null || true
    done
    if [[ $KEEP != 1 ]]; then
        echo "== removing $work"
        rm -rf "$work"
    fi
}
trap cleanup EXIT
results=$work/results.tsv
: >"$results"

wait_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + 20))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "server $pid exited" >&2; return 1; }
        ((SECONDS < deadline)) || { echo "port $port not listening" >&2; return 1; }
        sleep 0.05
    done
}

nginx_prefix=$work/nginx
mkdir -p "$nginx_prefix/files"
NGINX_PORT=$(free_port)
cat >"$nginx_prefix/nginx.conf" <<EOF
user root;
worker_processes 2;
worker_rlimit_nofile 65536;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=10000 inactive=60s;
    client_body_temp_path tmp_body;
    proxy_temp_path tmp_proxy;
    fastcgi_temp_path tmp_fastcgi;
    uwsgi_temp_path tmp_uwsgi;
    scgi_temp_path tmp_scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /f/ { root $nginx_prefix/files; rewrite ^/f/(.*)\$ /\$1 break; }
    }
}
EOF
nginx -c "$nginx_prefix/nginx.conf" -p "$nginx_prefix" -g 'daemon off;' &
NGINX_PID=$!
pids+=("$NGINX_PID")
wait_port "$NGINX_PORT" "$NGINX_PID"

MEDIA_PORT=$(free_port)
keys_port=$(free_port)
if ((reuse)); then
    sync
    echo 3 >/proc/sys/vm/drop_caches
fi
start_at=$(date +%s.%N)
"$KOSHKA_BIN" media serve --data-dir "$work/media/d1" --data-dir "$work/media/d2" \
    --http "127.0.0.1:$MEDIA_PORT" --keys "127.0.0.1:$keys_port" \
    >"$work/media-out.log" 2>"$work/media-err.log" &
MEDIA_PID=$!
pids+=("$MEDIA_PID")
wait_version "$keys_port" "$MEDIA_PID" 1800
start_secs=$(python3 -c "import time; print(f'{time.time() - $start_at:.1f}')")
echo "== koshka media answered after ${start_secs}s (reuse=$reuse: a restart scans every volume, caches cold)"

load_secs=0
if ((!reuse)); then
echo "== loading: $UPLOADERS processes write nginx's files and upload the same bytes ($(date -u +%T))"
load_start=$SECONDS
nice -n 19 ionice -c3 python3 - "$N" "$SIZE_MIN" "$SIZE_MAX" "$nginx_prefix/files" "$MEDIA_PORT" "$work" "$UPLOADERS" <<'EOF'
import hashlib, json, multiprocessing, os, random, re, socket, sys, time
n, lo, hi, root, port, work, procs = sys.argv[1:8]
n, lo, hi, port, procs = int(n), int(lo), int(hi), int(port), int(procs)
BATCH = 32
for a in range(256):
    for b in range(256):
        os.makedirs(f"{root}/{a:02x}/{b:02x}", exist_ok=True)
CL = re.compile(rb"content-length:\s*(\d+)", re.I)

def load(k):
    rng = random.Random(1000 + k)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    done = 0
    t0 = time.time()
    with open(f"{work}/nginx-paths.{k}", "w") as np_, open(f"{work}/media-paths.{k}", "w") as mp:
        batch = []
        def flush():
            nonlocal buf
            s.sendall(b"".join(batch))
            got = 0
            while got < len(batch):
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end]
                    length = int(CL.search(head).group(1))
                    if len(buf) >= end + 4 + length:
                        body = buf[end + 4:end + 4 + length]
                        buf = buf[end + 4 + length:]
                        if not head.startswith(b"HTTP/1.1 200"):
                            raise SystemExit(f"upload failed: {head!r} {body!r}")
                        mp.write(json.loads(body)["url"] + "\n")
                        got += 1
                        continue
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise SystemExit("koshka closed the connection")
                buf += chunk
            batch.clear()
        for i in range(k, n, procs):
            data = rng.randbytes(rng.randint(lo, hi))
            h = hashlib.md5(str(i).encode()).hexdigest()
            rel = f"{h[:2]}/{h[2:4]}/{i}.bin"
            with open(f"{root}/{rel}", "wb") as f:
                f.write(data)
            np_.write(f"/f/{rel}\n")
            batch.append(b"POST /upload HTTP/1.1\r\nHost: b\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(data) + data)
            if len(batch) == BATCH:
                flush()
            done += 1
            if k == 0 and done % 100000 == 0:
                rate = done * procs / (time.time() - t0)
                print(f"   {done * procs} files, {rate:.0f}/s", file=sys.stderr, flush=True)
        if batch:
            flush()

with multiprocessing.Pool(procs) as pool:
    pool.map(load, range(procs))
EOF
cat "$work"/nginx-paths.* >"$work/nginx-paths.txt"
cat "$work"/media-paths.* >"$work/media-paths.txt"
rm -f "$work"/nginx-paths.[0-9]* "$work"/media-paths.[0-9]*
load_secs=$((SECONDS - load_start))
fi
echo "== loaded $(wc -l <"$work/media-paths.txt") files in ${load_secs}s ($(date -u +%T)); disk use:"
if ((!reuse)); then
    du -sh "$nginx_prefix/files" "$work/media/d1" "$work/media/d2" | sed 's/^/   /'
fi
media_rss=$(awk '/VmRSS/ {print $2}' "/proc/$MEDIA_PID/status")

cat >"$work/reads.lua" <<'EOF'
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local seeded = false
request = function()
    if not seeded then math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)); seeded = true end
    return wrk.format("GET", paths[math.random(#paths)])
end
EOF

# run_wrk MODE TARGET: one wrk run; appends "mode target req/s p99_ms errors load1".
run_wrk() {
    local mode=$1 target=$2 port paths
    if [[ $target == nginx ]]; then
        port=$NGINX_PORT paths=$work/nginx-paths.txt
    else
        port=$MEDIA_PORT paths=$work/media-paths.txt
    fi
    if [[ $mode == cold ]]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
    fi
    echo "   [$mode $target] wrk -t2 -c$CONNECTIONS -d${DURATION}s --timeout 10s --latency -s reads.lua http://127.0.0.1:$port"
    PATHS=$paths wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency -s "$work/reads.lua" \
        "http://127.0.0.1:$port" >"$work/wrk.out"
    python3 - "$mode" "$target" "$work/wrk.out" "$(cut -d' ' -f1 /proc/loadavg)" >>"$results" <<'EOF'
import re, sys
mode, target, path, load = sys.argv[1:5]
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
print(f"{mode}\t{target}\t{rps:.0f}\t{p99:.2f}\t{errs.group(1) if errs else 0}\t{load}\t{sock.group(1) if sock else ''}")
EOF
    tail -1 "$results" | sed 's/^/   -> /'
}

echo "== cold: $ROUNDS rounds, caches dropped before every run"
for ((round = 0; round < ROUNDS; round++)); do
    for target in $( ((round % 2 == 0)) && echo "nginx koshka" || echo "koshka nginx"); do
        run_wrk cold "$target"
    done
done
echo "== warm: $WARM_ROUNDS rounds, each run after an unmeasured warm-up of the same target"
for ((round = 0; round < WARM_ROUNDS; round++)); do
    for target in $( ((round % 2 == 0)) && echo "nginx koshka" || echo "koshka nginx"); do
        run_wrk warmup "$target"
        run_wrk warm "$target"
    done
done

echo
echo "== results (mode target req/s p99_ms non2xx load1 socket_errors), in order"
cat "$results"
python3 - "$results" "$(wc -l <"$work/media-paths.txt")" "$media_rss" "$load_secs" "$start_secs" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
def med(mode, target, col):
    v = [float(r[col]) for r in rows if r[0] == mode and r[1] == target]
    return statistics.median(v) if v else float("nan")
print()
print("| mode | target | req/s (median) | p99 ms (median) |")
print("|---|---|---:|---:|")
for mode in ("cold", "warm"):
    for t in ("nginx", "koshka"):
        print(f"| {mode} | {t} | {med(mode, t, 2):,.0f} | {med(mode, t, 3):.1f} |")
print()
for mode in ("cold", "warm"):
    r = med(mode, "koshka", 2) / med(mode, "nginx", 2)
    p = med(mode, "koshka", 3) / med(mode, "nginx", 3)
    print(f"{mode}: koshka/nginx {r:.2f}x req/s, p99 {p:.2f}x")
print(f"{sys.argv[2]} files; loading took {sys.argv[4]} s (0: reused); koshka media RSS: {int(sys.argv[3]) // 1024} MiB; it answered {sys.argv[5]} s after its start")
EOF
