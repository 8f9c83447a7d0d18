#!/usr/bin/env python3
"""Compatibility suite: an unmodified pymemcache client against koshka's compiled-key engines.

Usage:
  python3 tests/compat/engines_pymemcache.py --port-messages P --port-friends P --port-wall P
                                             [--host 127.0.0.1] [--shards N]

The ports are those `koshka serve` prints (`koshka: <engine> listening on <addr>`); the node
must run with one shard. With `--shards N` the ports are a `koshka proxy` over N shards
(owner id `u` on shard `u mod N`): ids that the protocol requires on one node are then chosen
on one shard. Every check uses fresh user ids (derived from the time and pid), so the
suite can run again against the same node. It prints one line per check, then
`engines-pymemcache: N passed, M failed`, and exits non-zero if any check failed.
"""

import argparse
import json
import os
import socket
import sys
import time
import traceback

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheUnknownError

# Fresh ids for this run: 9 digits, below 2**31.
BASE = 100_000_000 + (int(time.time() * 1000) + os.getpid()) % 1_000_000 * 1000


def uid(n):
    return BASE + n


def make_client(host, port):
    return Client(
        (host, port),
        connect_timeout=5,
        timeout=10,
        allow_unicode_keys=True,
        encoding="utf-8",
        default_noreply=False,
    )


def text(c, key):
    value = c.get(key)
    return None if value is None else value.decode("utf-8")


def expect_client_error(fn, contains=""):
    try:
        fn()
    except MemcacheClientError as e:
        assert contains in str(e), f"{contains!r} not in {e}"
        return str(e)
    raise AssertionError("expected CLIENT_ERROR")


def raw(host, port, request, terminator):
    """Sends raw bytes on a fresh connection and reads through `terminator`."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(terminator):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def send(c, sender, recipient, tag, value):
    """The tag handshake: set sendmsg…#tag, then read both local ids on the same connection."""
    assert c.set(f"sendmsg{sender}_{recipient}#{tag}", value.encode()) is True
    return (
        int(text(c, f"newmsgid{sender}#{tag}")),
        int(text(c, f"newmsgid{recipient}#{tag}")),
    )


# --- messages ---------------------------------------------------------------------------


def check_messages_send_and_read(ctx):
    m = ctx.messages
    a, b = uid(1), uid(2)
    assert send(m, a, b, "t1", "8\nHi\tHello Bob") == (1, 1)
    inbox = json.loads(text(m, f"message{b}_1"))
    assert inbox["peer"] == a and inbox["flags"] == 9, inbox
    assert inbox["subject"] == "Hi" and inbox["text"] == "Hello Bob", inbox
    outbox = json.loads(text(m, f"message{a}_1"))
    assert outbox["flags"] == 10 and outbox["peer_msg_id"] == 1, outbox
    assert text(m, f"message{b}_2") is None
    # The tag belongs to the connection that used it.
    other = make_client(ctx.host, ctx.args.port_messages)
    assert other.get(f"newmsgid{a}#t1") is None
    other.close()


def check_messages_dialogs_and_sublists(ctx):
    m = ctx.messages
    a, b, c = uid(11), uid(12), uid(13)
    send(m, a, b, "d1", "0\nfirst")
    send(m, c, b, "d2", "0\nsecond")
    send(m, b, a, "d3", "0\nthird")
    assert text(m, f"topmsglist{b}") == f"2,3,{a},1,2,{c},1"
    assert text(m, f"sublist{b}_131:1") == "2,2,1"
    assert text(m, f"sublist{b}_130:2") == "1,3"
    assert text(m, f"sublist{b}_0:0#0,0") == "3"
    assert text(m, f"peermsglist{b}_{a}") == "2,3,1"
    assert text(m, f"unreadcount{b}") == "2"
    assert m.set(f"readall{b}_{a}", b"") is True
    assert text(m, f"unreadcount{b}") == "1"
    expect_client_error(lambda: m.get(f"sublist{b}_3:5"), "unsupported sublist")
    many = m.get_many([f"unreadcount{b}", f"unreadcount{a}", f"unreadcount{c}"])
    assert many == {
        f"unreadcount{b}": b"1",
        f"unreadcount{a}": b"1",
        f"unreadcount{c}": b"0",
    }, many


def check_messages_flags_and_history(ctx):
    m = ctx.messages
    a, b = uid(21), uid(22)
    send(m, a, b, "h1", "0\nhello")
    ts = int(text(m, f"timestamp{b}"))
    assert text(m, f"history{b}#{ts}") == str(ts)
    assert m.incr(f"flags{b}_1", 8) == 9
    assert m.decr(f"flags{b}_1", 1) == 8
    assert text(m, f"flags{b}_1") == "8"
    assert m.incr(f"flags{b}_5", 8) is None
    events = text(m, f"history{b}#{ts}").split(",")
    assert events[1:] == ["2", "1", "8", "3", "1", "1"], events
    assert int(events[0]) > ts
    assert text(m, f"sublist{b}_136:8") == "1,1"
    assert m.delete(f"message{b}_1") is True
    assert m.delete(f"message{b}_1") is False


def check_messages_search(ctx):
    m = ctx.messages
    a, b = uid(31), uid(32)
    send(m, a, b, "s1", "0\nПривет! Сообщения о погоде")
    send(m, a, b, "s2", "0\nI was running home")
    assert text(m, f"search({b},10,сообщение)") == "1,1"
    assert text(m, f"search({b},10,ПОГОДА)") == "1,1"
    assert text(m, f"search({b},10,%D0%BF%D0%BE%D0%B3%D0%BE%D0%B4%D1%8B)") == "1,1"
    assert text(m, f"search({b},10,run)") == "1,2"
    assert text(m, f"search({b},10,running+home)") == "1,2"
    assert text(m, f"search({b},10,run+погода)") == "0"
    assert text(m, f"xsearch({b},0:0,{a},0,0,10,home)") == "1,2"
    assert text(m, f"xsearch({b},0:0,{uid(39)},0,0,10,home)") == "0"


def check_messages_errors(ctx):
    m = ctx.messages
    expect_client_error(lambda: m.get("message0_1"))
    expect_client_error(lambda: m.get(f"status{uid(41)}"), "not supported by the messages")
    expect_client_error(lambda: m.set(f"sendmsg{uid(41)}_{uid(41)}", b"0\nme"))
    expect_client_error(lambda: m.gets(f"message{uid(41)}_1"), "not supported")
    expect_client_error(lambda: m.add(f"message{uid(41)}_1", b"x"), "not supported")
    expect_client_error(lambda: m.touch(f"message{uid(41)}_1", 10), "not supported")
    # The connection is still in step.
    assert text(m, f"unreadcount{uid(41)}") == "0"


# --- wall -------------------------------------------------------------------------------


def check_wall_posts_and_statuses(ctx):
    w = ctx.wall
    o = uid(51)
    assert w.set(f"newpost{o}#p", f"0,{o}\nFirst\tHello wall".encode()) is True
    assert text(w, f"newpostid{o}#p") == "1"
    post = json.loads(text(w, f"post{o}_1"))
    assert post["author"] == o and post["subject"] == "First", post
    assert post["text"] == "Hello wall", post
    assert w.set(f"newpost{o}#r", f"0,{uid(52)},1\nnice".encode()) is True
    assert text(w, f"newpostid{o}#r") == "2"
    assert json.loads(text(w, f"post{o}_2"))["reply_to"] == 1
    assert text(w, f"replies{o}_1") == "1,2"
    assert w.set(f"status{o}", b"feeling good") is True
    assert w.set(f"status{o}", "всё отлично".encode()) is True
    assert json.loads(text(w, f"status{o}"))["text"] == "всё отлично"
    assert json.loads(text(w, f"statuses{o}"))["total"] == 2
    assert w.incr(f"flags{o}_4", 128) is not None
    assert json.loads(text(w, f"status{o}"))["text"] == "feeling good"
    assert text(w, f"search({o},10,hello)") == "1,1"
    expect_client_error(lambda: w.get(f"topmsglist{o}"), "not supported by the wall")


def shard_id(ctx, owner, first, same):
    """The first id from uid(first) on (`same`) or off owner's shard."""
    n = first
    while (uid(n) % ctx.args.shards == owner % ctx.args.shards) != same:
        n += 1
    return uid(n)


def check_wall_repost(ctx):
    w = ctx.wall
    o = uid(61)
    # On one node both walls are its own. Through the proxy (several shards) the first repost
    # stays on the original's shard and the second crosses shards: the proxy reads the
    # original, writes the copy on the reposting wall's shard and sets COPIED on the original
    # (docs/proxy.md, "Writes that concern two shards").
    r = shard_id(ctx, o, 62, same=True)
    w.set(f"newpost{o}#p", f"0,{o}\nOriginal text".encode())
    walls = [r]
    if ctx.args.shards > 1:
        walls.append(shard_id(ctx, o, 62, same=False))
    for wall in walls:
        assert w.set(f"repost{wall}#c", f"{o},1,{wall}".encode()) is True
        assert text(w, f"newpostid{wall}#c") == "1"
        copy = json.loads(text(w, f"post{wall}_1"))
        assert copy["origin"] == {"owner": o, "id": 1}, copy
        assert copy["text"] == "Original text"
        assert json.loads(text(w, f"post{o}_1"))["flags"] & 256 == 256
    # A missing original is NOT_FOUND (not a `set` reply pymemcache knows), on a node and
    # across shards alike, and nothing is written.
    for wall in walls:
        try:
            w.set(f"repost{wall}#m", f"{o},99,{wall}".encode())
            raise AssertionError("a repost of a missing post was stored")
        except MemcacheUnknownError as e:
            assert "NOT_FOUND" in str(e), e
        assert text(w, f"post{wall}_2") is None


# --- friends ----------------------------------------------------------------------------


def check_friends_lists(ctx):
    f = ctx.friends
    a, b, c = uid(71), uid(72), uid(73)
    assert f.set(f"friend{a}_{b}", b"6") is True
    assert text(f, f"friend{a}_{b}") == "7"
    assert text(f, f"friend{b}_{a}") == "1"
    assert f.set(f"friend{a}_{c}", b"0") is True
    assert f.incr(f"friend{a}_{c}", 8) == 9
    assert text(f, f"friends{a}") == f"2,{b},{c}"
    assert text(f, f"friends_masks{a}") == f"2,{b},7,{c},9"
    assert text(f, f"friends{a}_3") == f"1,{c}"
    assert text(f, f"friendcnt{a}") == "2"
    assert f.delete(f"friend{a}_{c}") is True
    assert f.get(f"friend{c}_{a}") is None
    expect_client_error(lambda: f.set(f"friend{a}_{a}", b"0"), "themselves")


def check_friends_common_and_privacy(ctx):
    f = ctx.friends
    o, x, y, z = uid(81), uid(82), uid(83), uid(84)
    f.set(f"friend{o}_{x}", b"6")
    f.set(f"friend{o}_{y}", b"8")
    f.set(f"friend{z}_{x}", b"0")
    assert text(f, f"common_friends{o},{z}") == f"1,{x}"
    assert f.set("temp7", f"{x},{y}".encode()) is True
    assert text(f, f"common_friends{z}:-7") == f"1,{x}"
    assert text(f, f"common_friends_num{o}:{z},{y}") == "2,1,0"
    assert f.set(f"privacy{o}_album17", b"-1+2*3/4*0/G*A") is True
    assert text(f, f"privacy{o}_album17") == "-1*3+2/4*0/G*A"
    assert f.set(f"privacy{o}_priv_phone", b"*2") is True
    # The privacy batch check: y is in folder 3 (allowed), not in folder 2 (denied).
    assert text(f, f"{y}~{o}:album17,priv_phone,note5") == "30?"
    assert text(f, f"{z}~{o}:album17") == "0"
    assert text(f, f"{o}~{o}:note5") == "3"
    assert f.set(f"friendreq{o}_{uid(85)}", b"4") is True
    assert text(f, f"requests{o}").startswith(f"1,{uid(85)},5,")


def check_friends_errors(ctx):
    f = ctx.friends
    expect_client_error(lambda: f.get("friends0"))
    expect_client_error(lambda: f.get(f"friends{uid(91)}_31"))
    expect_client_error(lambda: f.get(f"common_friends{uid(91)}:-nosuchtag"))
    expect_client_error(lambda: f.append(f"friend{uid(91)}_{uid(92)}", b"1"), "not supported")
    reply = raw(ctx.host, ctx.args.port_friends, b"mg friends1 v\r\n", b"\r\n")
    assert reply == b"CLIENT_ERROR command not supported by the friends engine\r\n", reply
    assert text(f, f"friendcnt{uid(91)}") == "0"


CHECKS = [
    check_messages_send_and_read,
    check_messages_dialogs_and_sublists,
    check_messages_flags_and_history,
    check_messages_search,
    check_messages_errors,
    check_wall_posts_and_statuses,
    check_wall_repost,
    check_friends_lists,
    check_friends_common_and_privacy,
    check_friends_errors,
]


class Context:
    def __init__(self, args):
        self.args = args
        self.host = args.host
        self.messages = make_client(args.host, args.port_messages)
        self.wall = make_client(args.host, args.port_wall)
        self.friends = make_client(args.host, args.port_friends)

    def close(self):
        for client in (self.messages, self.wall, self.friends):
            client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-messages", type=int, required=True)
    parser.add_argument("--port-friends", type=int, required=True)
    parser.add_argument("--port-wall", type=int, required=True)
    parser.add_argument("--shards", type=int, default=1,
                        help="shards behind the ports (a koshka proxy); 1 = one node")
    args = parser.parse_args()
    passed = failed = 0
    for check in CHECKS:
        # A fresh set of connections per check: a failure cannot leave the next out of step.
        ctx = Context(args)
        try:
            check(ctx)
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {check.__name__}")
        finally:
            ctx.close()
    print(f"engines-pymemcache: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
