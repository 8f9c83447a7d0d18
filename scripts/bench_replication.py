#!/usr/bin/env python3
"""Replication benchmarks (docs/BENCHMARKS.md §6), driven by scripts/bench-replication.sh.

  lag        replica lag under a steady write load: a probe writes a key to the primary and
             times until the replica serves it; a local replica and one behind a relay that
             adds 25 ms each way (a 50 ms round trip, a "far datacenter"; bench code, not
             product code)
  throughput koshka bench (sets, 64 connections) against a primary alone, with one
             asynchronous replica, and semi-synchronous with one local replica (K = 1);
             rounds alternate, medians
  failover   kill -9 the primary of a three-node etcd-coordinated shard, time until a write
             is accepted again; N trials

Only loopback; every process is started here and stopped by PID.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    def __init__(self, args, log):
        self.log = open(log, "w")
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ports = {}

    def wait_ports(self, names, timeout=30):
        deadline = time.time() + timeout
        while not all(n in self.ports for n in names):
            if time.time() > deadline or self.p.poll() is not None:
                raise SystemExit(f"node did not start: {self.ports}")
            line = self.p.stdout.readline()
            m = re.match(r"koshka: (\S+) listening on [\d.]+:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)
            self.p.wait()


def node(binary, workdir, name, config, extra=()):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(workdir, name + ".toml")
    with open(cfg, "w") as f:
        f.write(config)
    p = Proc([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", d, "--engines", "kv",
              "--config", cfg, *extra], os.path.join(workdir, name + ".log"))
    return p


def mc(port, data, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    while not (out.endswith(b"END\r\n") or out in (b"STORED\r\n",) or out.startswith(b"SERVER_ERROR")):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def stats(port):
    out = mc(port, b"stats\r\n").decode()
    return dict(l[5:].split(" ", 1) for l in out.split("\r\n") if l.startswith("STAT "))


# ---- a delaying relay: the "far datacenter" -------------------------------------------------

async def relay_main(listen_port, target_port, delay, ready):
    async def pipe(reader, writer):
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()

        async def sender():
            while True:
                due, data = await queue.get()
                if data is None:
                    writer.close()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(sender())
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data or None))
            if not data:
                break
        await task

    async def handle(reader, writer):
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    ready.set()
    async with server:
        await server.serve_forever()


def start_relay(target_port, delay):
    port = free_port()
    ready = threading.Event()
    threading.Thread(target=lambda: asyncio.run(relay_main(port, target_port, delay, ready)),
                     daemon=True).start()
    ready.wait()
    return port


# ---- lag -------------------------------------------------------------------------------------

def probe_lag(primary_port, replica_ports, probes, interval):
    """Per replica: seconds from a write's acknowledgement to the replica serving it."""
    lags = {p: [] for p in replica_ports}
    w = socket.create_connection(("127.0.0.1", primary_port))
    readers = {p: socket.create_connection(("127.0.0.1", p)) for p in replica_ports}
    for i in range(probes):
        key = b"lagprobe%d" % i
        w.sendall(b"set %s 0 0 1\r\nx\r\n" % key)
        assert w.recv(64) == b"STORED\r\n"
        acked = time.perf_counter()
        pending = set(replica_ports)
        while pending:
            for p in list(pending):
                r = readers[p]
                r.sendall(b"get %s\r\n" % key)
                out = b""
                while not out.endswith(b"END\r\n"):
                    out += r.recv(4096)
                if out.startswith(b"VALUE"):
                    lags[p].append(time.perf_counter() - acked)
                    pending.discard(p)
            if time.perf_counter() - acked > 10:
                raise SystemExit("a replica lags more than 10 s")
        time.sleep(interval)
    return lags


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def bench_load(binary, port, seconds, connections, rate_note=""):
    return subprocess.Popen([binary, "bench", "--server", f"127.0.0.1:{port}", "--connections",
                             str(connections), "--get-ratio", "0", "--duration", str(seconds),
                             "--warmup", "0", "--keys", "100000", "--value-size", "100",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def lag(binary, workdir, args):
    base = '[replication]\nlisten = "127.0.0.1:0"\n'
    primary = node(binary, workdir, "lag-p", base)
    primary.wait_ports(["kv", "replication"])
    rport = primary.ports["replication"]
    far = start_relay(rport, 0.025)
    near = node(binary, workdir, "lag-near", "", ["--replica-of", f"127.0.0.1:{rport}"])
    far_node = node(binary, workdir, "lag-far", "", ["--replica-of", f"127.0.0.1:{far}"])
    near.wait_ports(["kv"])
    far_node.wait_ports(["kv"])
    time.sleep(1)
    load = bench_load(binary, primary.ports["kv"], args.lag_seconds + 2, args.lag_connections)
    time.sleep(1)
    lags = probe_lag(primary.ports["kv"], [near.ports["kv"], far_node.ports["kv"]],
                     args.probes, 0.01)
    out = json.loads(load.communicate()[0] or "{}")
    for p in (near, far_node, primary):
        p.kill(signal.SIGTERM)
    rows = []
    for name, port in (("local replica", near.ports["kv"]), ("replica 50 ms away", far_node.ports["kv"])):
        v = lags[port]
        rows.append((name, statistics.median(v) * 1e3, pct(v, 0.99) * 1e3, max(v) * 1e3))
    print(f"\nreplica lag, {args.probes} probes under a background load of "
          f"{args.lag_connections} connections writing 100-byte values "
          f"({out.get('ops_per_sec', out.get('throughput', '?'))} sets/s on the primary)")
    print("| replica | median ms | p99 ms | max ms |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} |")


# ---- throughput ------------------------------------------------------------------------------

def throughput_once(binary, workdir, mode, args, n):
    tag = f"tp-{mode}-{n}"
    cfg = '[replication]\nlisten = "127.0.0.1:0"\n'
    if mode == "semisync":
        cfg += "semisync_replicas = 1\n"
    primary = node(binary, workdir, tag + "-p", cfg)
    primary.wait_ports(["kv", "replication"])
    replica = None
    if mode != "alone":
        replica = node(binary, workdir, tag + "-r", "",
                       ["--replica-of", f"127.0.0.1:{primary.ports['replication']}"])
        replica.wait_ports(["kv"])
        deadline = time.time() + 10
        while stats(primary.ports["kv"]).get("repl_replicas") != "1":
            if time.time() > deadline:
                raise SystemExit("replica did not connect")
            time.sleep(0.05)
    cpu0 = cpu_seconds(primary.p.pid)
    run = subprocess.run([binary, "bench", "--server", f"127.0.0.1:{primary.ports['kv']}",
                          "--connections", "64", "--get-ratio", "0", "--duration",
                          str(args.seconds), "--warmup", "0", "--keys", "100000",
                          "--value-size", "100", "--json"], capture_output=True, text=True)
    result = json.loads(run.stdout)
    # Sets per primary CPU-second over the whole run (warm-up included, as in the CPU time).
    result["per_cpu_s"] = result["sets"] / max(cpu_seconds(primary.p.pid) - cpu0, 1e-9)
    for p in (replica, primary):
        if p:
            p.kill(signal.SIGTERM)
    shutil.rmtree(os.path.join(workdir, tag + "-p"), ignore_errors=True)
    shutil.rmtree(os.path.join(workdir, tag + "-r"), ignore_errors=True)
    return result


def throughput(binary, workdir, args):
    modes = ["alone", "async", "semisync"]
    results = {m: [] for m in modes}
    for n in range(args.rounds):
        for m in (modes if n % 2 == 0 else list(reversed(modes))):
            r = throughput_once(binary, workdir, m, args, n)
            results[m].append(r)
            print(f"  round {n + 1} {m}: {r['ops_per_sec']:.0f} sets/s, p99 {r['latency_us']['p99']:.0f} us, "
                  f"{r['per_cpu_s']:.0f} sets per primary CPU-second",
                  file=sys.stderr)
    med = {m: statistics.median(r["ops_per_sec"] for r in results[m]) for m in modes}
    p99 = {m: statistics.median(r["latency_us"]["p99"] for r in results[m]) for m in modes}
    cpu = {m: statistics.median(r["per_cpu_s"] for r in results[m]) for m in modes}
    print(f"\nprimary write throughput, 64 connections, sets of 100-byte values, durability "
          f"everysec, medians of {args.rounds} alternating rounds of {args.seconds} s")
    print("| setup | sets/s | p99 µs | ratio | sets per primary CPU-s | ratio |\n"
          "|---|---:|---:|---:|---:|---:|")
    print(f"| primary alone | {med['alone']:.0f} | {p99['alone']:.0f} | 1.00 | "
          f"{cpu['alone']:.0f} | 1.00 |")
    print(f"| one async replica | {med['async']:.0f} | {p99['async']:.0f} | "
          f"{med['async'] / med['alone']:.2f} × alone | {cpu['async']:.0f} | "
          f"{cpu['async'] / cpu['alone']:.2f} × alone |")
    print(f"| semi-sync, K = 1, local replica | {med['semisync']:.0f} | {p99['semisync']:.0f} | "
          f"{med['semisync'] / med['async']:.2f} × async | {cpu['semisync']:.0f} | "
          f"{cpu['semisync'] / cpu['async']:.2f} × async |")


# ---- failover --------------------------------------------------------------------------------

def start_etcd(workdir):
    client, peer = free_port(), free_port()
    d = tempfile.mkdtemp(dir=workdir)
    url, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    p = subprocess.Popen(["etcd", "--name", "b", "--data-dir", d, "--listen-client-urls", url,
                          "--advertise-client-urls", url, "--listen-peer-urls", purl,
                          "--initial-advertise-peer-urls", purl, "--initial-cluster",
                          f"b={purl}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", client), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit("etcd did not start")
            time.sleep(0.1)
    time.sleep(0.5)
    return p, url


def try_set(port, key):
    try:
        return mc(port, b"set %s 0 0 1\r\nx\r\n" % key, timeout=2) == b"STORED\r\n"
    except OSError:
        return False


def failover(binary, workdir, args):
    etcd, url = start_etcd(workdir)
    times = []
    try:
        for t in range(args.trials):
            cfg = (f'[replication]\nlisten = "127.0.0.1:0"\netcd = "{url}"\ncluster = "trial{t}"\n'
                   f"lease_ttl_ms = {args.ttl_ms}\n")
            nodes = []
            first = node(binary, workdir, f"fo{t}-0", cfg)
            first.wait_ports(["kv", "replication"])
            nodes.append(first)
            for i in (1, 2):
                n = node(binary, workdir, f"fo{t}-{i}", cfg)
                n.wait_ports(["kv", "replication"])
                nodes.append(n)
            primary = next(n for n in nodes if stats(n.ports["kv"]).get("repl_role") == "primary")
            for i in range(200):
                assert try_set(primary.ports["kv"], b"k%d" % i)
            primary.kill()
            killed = time.perf_counter()
            others = [n for n in nodes if n is not primary]
            while not any(try_set(n.ports["kv"], b"after") for n in others):
                if time.perf_counter() - killed > 60:
                    raise SystemExit("no failover within 60 s")
                time.sleep(0.01)
            took = time.perf_counter() - killed
            times.append(took)
            print(f"  trial {t + 1}: writes accepted again after {took:.2f} s", file=sys.stderr)
            for n in others:
                n.kill(signal.SIGTERM)
    finally:
        etcd.kill()
    print(f"\nfailover, kill -9 of the primary of a 3-node shard, lease_ttl_ms {args.ttl_ms}, "
          f"{args.trials} trials: writes accepted again after median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/koshka")
    ap.add_argument("--what", default="lag,throughput,failover")
    ap.add_argument("--probes", type=int, default=500)
    ap.add_argument("--lag-seconds", type=int, default=8)
    ap.add_argument("--lag-connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ttl-ms", type=int, default=3000)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="koshka-bench-repl.")
    try:
        for what in args.what.split(","):
            {"lag": lag, "throughput": throughput, "failover": failover}[what](
                args.binary, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
