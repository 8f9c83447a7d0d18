#!/usr/bin/env python3
"""Compatibility suite: an unmodified pymemcache client against a memcached-protocol server.

Usage: python3 tests/compat/pymemcache_test.py --port PORT [--host 127.0.0.1]

Each check asserts real behaviour; the script prints one line per check, then
`pymemcache: N passed, M failed`, and exits non-zero if any check failed.
"""

import argparse
import socket
import sys
import time
import traceback

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError


def make_client(args):
    return Client(
        (args.host, args.port),
        connect_timeout=5,
        timeout=10,
        allow_unicode_keys=True,
        encoding="utf-8",
        default_noreply=False,
    )


def check_set_get(c):
    assert c.set("alpha", b"one") is True
    assert c.get("alpha") == b"one"
    assert c.get("no-such-key") is None
    assert c.set("alpha", b"two", noreply=False) is True
    assert c.get("alpha") == b"two"
    # noreply: the server must store without answering, and stay in step.
    c.set("quiet", b"shh", noreply=True)
    assert c.get("quiet") == b"shh"
    assert c.get("alpha", default=b"dflt") == b"two"


def check_flags_and_empty_value(c):
    c.set("empty", b"")
    assert c.get("empty") == b""
    raw = raw_command(c, b"set flagged 4294967295 0 3\r\nabc\r\nget flagged\r\n", 2)
    assert raw == b"STORED\r\nVALUE flagged 4294967295 3\r\nabc\r\nEND\r\n", raw


def check_add_replace(c):
    c.delete("ar")
    assert c.add("ar", b"1") is True
    assert c.add("ar", b"2") is False
    assert c.get("ar") == b"1"
    assert c.replace("ar", b"3") is True
    assert c.replace("ar-missing", b"4") is False
    assert c.get("ar") == b"3"
    assert c.get("ar-missing") is None


def check_append_prepend(c):
    c.set("ap", b"middle")
    assert c.append("ap", b">end") is True
    assert c.prepend("ap", b"start<") is True
    assert c.get("ap") == b"start<middle>end"
    assert c.append("ap-missing", b"x") is False
    assert c.prepend("ap-missing", b"x") is False
    assert c.get("ap-missing") is None


def check_cas(c):
    c.set("cas", b"v1")
    value, token = c.gets("cas")
    assert value == b"v1" and token is not None
    assert c.cas("cas", b"v2", token) is True
    assert c.cas("cas", b"v3", token) is False  # token is stale now
    assert c.get("cas") == b"v2"
    assert c.cas("cas-missing", b"x", token) is None
    value2, token2 = c.gets("cas")
    assert value2 == b"v2" and token2 != token
    many = c.gets_many(["cas", "cas-missing"])
    assert list(many.keys()) == ["cas"] and many["cas"][0] == b"v2"


def check_incr_decr(c):
    c.set("n", b"10")
    assert c.incr("n", 5) == 15
    assert c.decr("n", 3) == 12
    assert c.decr("n", 100) == 0  # decr floors at zero
    assert c.incr("n-missing", 1) is None
    assert c.decr("n-missing", 1) is None
    c.set("big", b"18446744073709551615")
    assert c.incr("big", 1) == 0  # 64-bit wrap-around
    c.set("nan", b"abc")
    try:
        c.incr("nan", 1)
    except MemcacheClientError:
        pass
    else:
        raise AssertionError("incr on a non-number must fail")
    assert c.get("nan") == b"abc"


def check_touch_and_expiry(c):
    c.set("ttl", b"soon", expire=1)
    c.set("keep", b"stay", expire=1)
    assert c.touch("keep", expire=0) is True
    assert c.touch("touch-missing", expire=10) is False
    deadline = time.monotonic() + 5
    while c.get("ttl") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.get("ttl") is None, "item with 1 s TTL still there after 5 s"
    assert c.get("keep") == b"stay"
    reply = raw_command(c, b"gat 100 keep\r\n", 1)
    assert reply == b"VALUE keep 0 4\r\nstay\r\nEND\r\n", reply


def check_delete(c):
    c.set("del", b"x")
    assert c.delete("del") is True
    assert c.get("del") is None
    assert c.delete("del", noreply=False) is False
    c.set("del2", b"x")
    assert c.delete_many(["del2", "del-missing"]) is True
    assert c.get("del2") is None


def check_multi_get(c):
    values = {f"multi:{i}": f"value {i}".encode() for i in range(100)}
    assert c.set_many(values) == []
    got = c.get_many(list(values) + ["multi:missing"])
    assert got == values


def check_big_multi_get(c):
    values = {f"bulk:{i:05d}": (b"%06d" % i) * 50 for i in range(2000)}
    assert c.set_many(values) == []
    keys = list(values)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        got = c.get_many(chunk)
        assert len(got) == len(chunk), (len(got), len(chunk))
        assert all(got[k] == values[k] for k in chunk)


def check_unicode(c):
    text = "Привет, мир! 你好 🐱 — «кошка»"
    c.set("unicode-value", text.encode("utf-8"))
    assert c.get("unicode-value").decode("utf-8") == text
    c.set("ключ-кошка", "значение".encode("utf-8"))
    assert c.get("ключ-кошка") == "значение".encode("utf-8")
    binary = bytes(range(256)) * 4 + b"\r\nEND\r\n"
    c.set("binary", binary)
    assert c.get("binary") == binary


def check_large_value(c):
    value = bytes((i * 7 + 3) % 251 for i in range(500 * 1024))
    assert c.set("large", value) is True
    assert c.get("large") == value
    assert c.get_many(["large", "alpha"])["large"] == value


def check_long_key(c):
    key = "k" * 250
    c.set(key, b"long")
    assert c.get(key) == b"long"
    reply = raw_command(c, b"get " + b"k" * 251 + b"\r\n", 1)
    assert reply.startswith(b"CLIENT_ERROR"), reply


def check_stats(c):
    before = c.stats()
    c.set("stat-key", b"x")
    c.get("stat-key")
    c.get("stat-missing")
    after = c.stats()
    for name in (b"pid", b"uptime", b"version", b"curr_items", b"cmd_get", b"get_hits",
                 b"get_misses", b"cmd_set"):
        assert name in after, f"stats lacks {name!r}"
    assert after[b"get_hits"] >= before[b"get_hits"] + 1
    assert after[b"get_misses"] >= before[b"get_misses"] + 1
    assert after[b"cmd_set"] >= before[b"cmd_set"] + 1
    assert after[b"curr_items"] >= 1
    version = c.version()
    assert version and isinstance(version, bytes)


def check_flush_all(c):
    c.set("f1", b"1")
    c.set("f2", b"2")
    assert c.flush_all() is True
    assert c.get("f1") is None and c.get("f2") is None
    assert c.set("f3", b"3") is True
    assert c.get("f3") == b"3"


def raw_command(c, payload, replies):
    """Sends raw bytes over a fresh socket and reads `replies` reply frames."""
    host, port = c.server
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + 10
        while count_frames(data) < replies and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def count_frames(data):
    """Counts complete reply frames (single lines or VALUE...END blocks)."""
    frames, pos = 0, 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return frames
        line = data[pos:end]
        pos = end + 2
        if line.startswith(b"VALUE "):
            pos += int(line.split()[3]) + 2
            if pos > len(data):
                return frames
            continue
        if line.startswith(b"STAT "):
            continue
        frames += 1


CHECKS = [
    check_set_get, check_flags_and_empty_value, check_add_replace, check_append_prepend,
    check_cas, check_incr_decr, check_touch_and_expiry, check_delete, check_multi_get,
    check_big_multi_get, check_unicode, check_large_value, check_long_key, check_stats,
    check_flush_all,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    passed = failed = 0
    for check in CHECKS:
        client = make_client(args)
        try:
            check(client)
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {check.__name__}")
        finally:
            client.close()
    print(f"pymemcache: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
