//! The kv port's memcached text and meta protocol as `(request bytes, expected reply bytes)`
//! tables, run against the real `koshka serve` over a real socket.
//!
//! With `KOSHKA_REFERENCE_MEMCACHED=1` the same tables run against the real memcached
//! (`$MEMCACHED`, default `/usr/bin/memcached`) instead, which checks our expectations against
//! the reference server (memcached's `T_MEMD_USE_DAEMON` idea). Cases where koshka
//! deliberately differs (its version string, `get prefix*` scans, huge lengths) are marked
//! koshka-only and skipped there.
//!
//! Expected replies are byte patterns: `{#}` matches a decimal number, `{*}` the rest of a
//! line, `{...}` anything (newlines included), `{$name}` a number captured on first use and
//! compared afterwards; in requests `{$name}` is replaced by the captured number. Each request
//! is followed by `mn`, so the reply compared is exactly what the request produced, empty for
//! `noreply` and quiet meta commands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{show, Conn, Node};
use koshka_client::testkit::ServerProcess;

/// One table row.
struct Case {
    request: &'static [u8],
    expect: &'static [u8],
    koshka_only: bool,
}

/// A row checked against both servers.
const fn both(request: &'static [u8], expect: &'static [u8]) -> Case {
    Case {
        request,
        expect,
        koshka_only: false,
    }
}

/// A row where koshka deliberately differs from memcached.
const fn koshka(request: &'static [u8], expect: &'static [u8]) -> Case {
    Case {
        request,
        expect,
        koshka_only: true,
    }
}

/// The server under test: koshka, or memcached when the reference switch is on.
enum Target {
    Koshka(Node),
    Memcached(ServerProcess),
}

impl Target {
    fn start() -> Target {
        if reference() {
            let program =
                std::env::var("MEMCACHED").unwrap_or_else(|_| "/usr/bin/memcached".to_owned());
            let args = [
                "-l",
                "127.0.0.1",
                "-p",
                "{port}",
                "-U",
                "0",
                "-u",
                "root",
                "-m",
                "64",
                "-t",
                "2",
            ];
            Target::Memcached(ServerProcess::spawn(&program, &args).expect("start memcached"))
        } else {
            Target::Koshka(Node::start(&["--engines", "kv", "--threads", "2"]))
        }
    }

    fn port(&self) -> u16 {
        match self {
            Target::Koshka(node) => node.port("kv"),
            Target::Memcached(server) => server.port(),
        }
    }
}

fn reference() -> bool {
    std::env::var("KOSHKA_REFERENCE_MEMCACHED").is_ok_and(|v| v == "1")
}

/// One piece of an expected-reply pattern.
#[derive(Debug)]
enum Piece<'a> {
    Literal(&'a [u8]),
    Number,
    Line,
    Any,
    Capture(&'a str),
}

fn pieces(pattern: &[u8]) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let next = rest.iter().position(|&b| b == b'{');
        let close = next.and_then(|i| rest[i..].iter().position(|&b| b == b'}').map(|j| i + j));
        match (next, close) {
            (Some(open), Some(close)) => {
                if open > 0 {
                    out.push(Piece::Literal(&rest[..open]));
                }
                let inner = std::str::from_utf8(&rest[open + 1..close]).expect("utf-8 marker");
                out.push(match inner {
                    "#" => Piece::Number,
                    "*" => Piece::Line,
                    "..." => Piece::Any,
                    name if name.starts_with('$') => Piece::Capture(&name[1..]),
                    other => panic!("unknown marker {{{other}}}"),
                });
                rest = &rest[close + 1..];
            }
            _ => {
                out.push(Piece::Literal(rest));
                rest = &[];
            }
        }
    }
    out
}

/// Backtracking match of `pieces` against all of `reply`, filling `vars`.
fn matches(pieces: &[Piece<'_>], reply: &[u8], vars: &mut HashMap<String, String>) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return reply.is_empty();
    };
    match first {
        Piece::Literal(lit) => reply.starts_with(lit) && matches(rest, &reply[lit.len()..], vars),
        Piece::Number | Piece::Capture(_) => {
            let digits = reply.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            if let Piece::Capture(name) = first {
                let value = std::str::from_utf8(&reply[..digits]).expect("digits");
                match vars.get(*name) {
                    Some(known) if known != value => return false,
                    Some(_) => {}
                    None => {
                        let mut tried = vars.clone();
                        tried.insert((*name).to_owned(), value.to_owned());
                        if matches(rest, &reply[digits..], &mut tried) {
                            *vars = tried;
                            return true;
                        }
                        return false;
                    }
                }
            }
            matches(rest, &reply[digits..], vars)
        }
        Piece::Line | Piece::Any => {
            let limit = if matches!(first, Piece::Line) {
                reply
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .unwrap_or(reply.len())
            } else {
                reply.len()
            };
            (0..=limit).any(|n| matches(rest, &reply[n..], vars))
        }
    }
}

/// Replaces `{$name}` in a request by its captured value.
fn substitute(request: &[u8], vars: &HashMap<String, String>) -> Vec<u8> {
    let mut out = request.to_vec();
    for (name, value) in vars {
        let marker = format!("{{${name}}}");
        while let Some(at) = common::find(&out, marker.as_bytes()) {
            out.splice(at..at + marker.len(), value.bytes());
        }
    }
    out
}

/// Runs `cases` in order on one connection; panics listing every mismatch.
fn run_table(port: u16, cases: &[Case]) {
    let reference = reference();
    let mut conn = Conn::open(port);
    let mut vars = HashMap::new();
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if reference && case.koshka_only {
            continue;
        }
        let request = substitute(case.request, &vars);
        let reply = conn.exchange(&request);
        if !matches(&pieces(case.expect), &reply, &mut vars) {
            failures.push(format!(
                "#{index} {}\n    expected {}\n    got      {}",
                show(&request),
                show(case.expect),
                show(&reply)
            ));
        }
    }
    let server = if reference { "memcached" } else { "koshka" };
    assert!(
        failures.is_empty(),
        "{} of {} cases failed against {server}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn pattern_matcher_works() {
    let mut vars = HashMap::new();
    assert!(matches(
        &pieces(b"VALUE a 0 1 {$c}\r\n"),
        b"VALUE a 0 1 42\r\n",
        &mut vars
    ));
    assert_eq!(vars["c"], "42");
    assert!(!matches(&pieces(b"{$c}"), b"43", &mut vars));
    assert!(matches(
        &pieces(b"STAT {...}END\r\n"),
        b"STAT a 1\r\nSTAT b 2\r\nEND\r\n",
        &mut vars
    ));
    assert!(!matches(
        &pieces(b"VERSION {*}\r\n"),
        b"VERSION 1\r\nX\r\n",
        &mut vars
    ));
    assert_eq!(
        substitute(b"cas k 0 0 1 {$c}\r\n", &vars),
        b"cas k 0 0 1 42\r\n"
    );
}

#[test]
fn storage_commands() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"flush_all\r\n", b"OK\r\n"),
            both(b"get foo\r\n", b"END\r\n"),
            both(b"set foo 5 0 3\r\nbar\r\n", b"STORED\r\n"),
            both(b"get foo\r\n", b"VALUE foo 5 3\r\nbar\r\nEND\r\n"),
            both(b"gets foo\r\n", b"VALUE foo 5 3 {$c1}\r\nbar\r\nEND\r\n"),
            both(b"cas foo 7 0 3 999999999\r\nbaz\r\n", b"EXISTS\r\n"),
            both(b"cas foo 7 0 3 {$c1}\r\nbaz\r\n", b"STORED\r\n"),
            both(b"cas foo 7 0 3 {$c1}\r\nqux\r\n", b"EXISTS\r\n"),
            both(b"cas nope 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n"),
            both(b"get foo\r\n", b"VALUE foo 7 3\r\nbaz\r\nEND\r\n"),
            both(b"add foo 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            both(b"add new 1 0 1\r\nx\r\n", b"STORED\r\n"),
            both(b"replace nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            both(b"replace new 2 0 2\r\nyy\r\n", b"STORED\r\n"),
            both(b"append new 9 0 2\r\nzz\r\n", b"STORED\r\n"),
            both(b"prepend new 9 0 2\r\naa\r\n", b"STORED\r\n"),
            both(b"get new\r\n", b"VALUE new 2 6\r\naayyzz\r\nEND\r\n"),
            both(b"append nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            both(b"prepend nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            both(
                b"get foo new nope foo\r\n",
                b"VALUE foo 7 3\r\nbaz\r\nVALUE new 2 6\r\naayyzz\r\nVALUE foo 7 3\r\nbaz\r\nEND\r\n",
            ),
            both(
                b"gets foo new\r\n",
                b"VALUE foo 7 3 {$c2}\r\nbaz\r\nVALUE new 2 6 {#}\r\naayyzz\r\nEND\r\n",
            ),
            both(b"get   foo   \r\n", b"VALUE foo 7 3\r\nbaz\r\nEND\r\n"),
            both(b"get foo\n", b"VALUE foo 7 3\r\nbaz\r\nEND\r\n"),
            both(b"set empty 0 0 0\r\n\r\n", b"STORED\r\n"),
            both(b"get empty\r\n", b"VALUE empty 0 0\r\n\r\nEND\r\n"),
            both(b"set bin 0 0 6\r\n\x00\r\n\xff\x01\n\r\n", b"STORED\r\n"),
            both(b"get bin\r\n", b"VALUE bin 0 6\r\n\x00\r\n\xff\x01\n\r\nEND\r\n"),
            both(b"set maxflags 4294967295 0 1\r\nx\r\n", b"STORED\r\n"),
            both(b"get maxflags\r\n", b"VALUE maxflags 4294967295 1\r\nx\r\nEND\r\n"),
            // memcached 1.6.18 truncates flags past 32 bits; koshka refuses them.
            koshka(
                b"set overflags 4294967296 0 1\r\nx\r\n",
                b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
            ),
            both(b"set past 0 -1 1\r\nx\r\n", b"STORED\r\n"),
            both(b"get past\r\n", b"END\r\n"),
            both(b"set later 0 1000 1\r\nx\r\n", b"STORED\r\n"),
            both(b"get later\r\n", b"VALUE later 0 1\r\nx\r\nEND\r\n"),
            both(b"delete foo\r\n", b"DELETED\r\n"),
            both(b"delete foo\r\n", b"NOT_FOUND\r\n"),
            both(b"delete new 0\r\n", b"DELETED\r\n"),
            both(
                b"delete new 5\r\n",
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
            ),
            both(b"get foo new\r\n", b"END\r\n"),
        ],
    );
}

#[test]
fn arithmetic() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"set n 0 0 2\r\n10\r\n", b"STORED\r\n"),
            both(b"incr n 5\r\n", b"15\r\n"),
            both(b"decr n 3\r\n", b"12\r\n"),
            both(b"decr n 100\r\n", b"0\r\n"),
            both(
                b"incr n 18446744073709551615\r\n",
                b"18446744073709551615\r\n",
            ),
            both(b"incr n 1\r\n", b"0\r\n"),
            both(
                b"incr n 18446744073709551616\r\n",
                b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ),
            both(b"incr nope 1\r\n", b"NOT_FOUND\r\n"),
            both(b"decr nope 1\r\n", b"NOT_FOUND\r\n"),
            both(b"set s 0 0 3\r\nabc\r\n", b"STORED\r\n"),
            both(
                b"incr s 1\r\n",
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            ),
            both(
                b"incr n abc\r\n",
                b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ),
            both(
                b"incr n -1\r\n",
                b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ),
            both(b"set w 3 0 2\r\n99\r\n", b"STORED\r\n"),
            both(b"incr w 1\r\n", b"100\r\n"),
            both(b"get w\r\n", b"VALUE w 3 3\r\n100\r\nEND\r\n"),
            both(b"decr w 1\r\n", b"99\r\n"),
            both(b"incr w 1 noreply\r\n", b""),
            both(b"decr w 2 noreply\r\n", b""),
            both(b"incr w 0\r\n", b"98\r\n"),
            both(b"incr\r\n", b"ERROR\r\n"),
            both(b"incr w\r\n", b"ERROR\r\n"),
        ],
    );
}

#[test]
fn touch_and_get_and_touch() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"set t 3 0 1\r\nx\r\n", b"STORED\r\n"),
            both(b"touch t 100\r\n", b"TOUCHED\r\n"),
            both(b"touch nope 100\r\n", b"NOT_FOUND\r\n"),
            both(b"touch t 100 noreply\r\n", b""),
            both(
                b"touch t abc\r\n",
                b"CLIENT_ERROR invalid exptime argument\r\n",
            ),
            both(b"mg t t\r\n", b"HD t{#}\r\n"),
            both(b"gat 200 t\r\n", b"VALUE t 3 1\r\nx\r\nEND\r\n"),
            both(b"gats 200 t nope\r\n", b"VALUE t 3 1 {#}\r\nx\r\nEND\r\n"),
            both(b"gat 200 nope\r\n", b"END\r\n"),
            both(
                b"gat abc t\r\n",
                b"CLIENT_ERROR invalid exptime argument\r\n",
            ),
            both(b"gat 0 t\r\n", b"VALUE t 3 1\r\nx\r\nEND\r\n"),
            both(b"mg t t\r\n", b"HD t-1\r\n"),
            both(b"gat -1 t\r\n", b"VALUE t 3 1\r\nx\r\nEND\r\n"),
            both(b"get t\r\n", b"END\r\n"),
            // memcached answers `END` to a gat without keys; koshka treats it like `get`.
            koshka(b"gat 10\r\n", b"ERROR\r\n"),
        ],
    );
}

#[test]
fn noreply_is_silent() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"set a 1 0 1 noreply\r\nx\r\n", b""),
            both(b"add a 0 0 1 noreply\r\ny\r\n", b""),
            both(b"add b 0 0 1 noreply\r\ny\r\n", b""),
            both(b"replace a 2 0 1 noreply\r\nz\r\n", b""),
            both(b"append a 0 0 1 noreply\r\n1\r\n", b""),
            both(b"prepend a 0 0 1 noreply\r\n0\r\n", b""),
            both(
                b"get a b\r\n",
                b"VALUE a 2 3\r\n0z1\r\nVALUE b 0 1\r\ny\r\nEND\r\n",
            ),
            both(b"cas a 0 0 1 1 noreply\r\nq\r\n", b""),
            both(b"delete a noreply\r\n", b""),
            both(b"delete a noreply\r\n", b""),
            both(b"set n 0 0 1 noreply\r\n5\r\n", b""),
            both(b"incr n 1 noreply\r\n", b""),
            both(b"touch n 10 noreply\r\n", b""),
            both(b"verbosity 1 noreply\r\n", b""),
            both(b"get a n\r\n", b"VALUE n 0 1\r\n6\r\nEND\r\n"),
            both(b"flush_all noreply\r\n", b""),
            both(b"get n b\r\n", b"END\r\n"),
            // memcached ignores a trailing token that is not `noreply`.
            both(b"set x 0 0 1 norepl\r\nx\r\n", b"STORED\r\n"),
            // `noreply` silences error replies too (memcached's issue_3.t): the client reads
            // none, so one would shift every later reply.
            both(b"delete x 10 noreply\r\n", b""),
            both(b"incr x y noreply\r\n", b""),
            both(b"touch x y noreply\r\n", b""),
            both(b"set e x 0 1 noreply\r\n", b""),
            both(b"flush_all x noreply\r\n", b""),
            both(b"verbosity x noreply\r\n", b""),
            both(b"get x\r\n", b"VALUE x 0 1\r\nx\r\nEND\r\n"),
        ],
    );
}

#[test]
fn misc_commands() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"version\r\n", b"VERSION {*}\r\n"),
            koshka(b"version\r\n", b"VERSION 1.6.21-koshka-{*}\r\n"),
            both(b"verbosity 1\r\n", b"OK\r\n"),
            both(b"verbosity\r\n", b"ERROR\r\n"),
            both(b"bogus\r\n", b"ERROR\r\n"),
            both(b"GET foo\r\n", b"ERROR\r\n"),
            both(b"get\r\n", b"ERROR\r\n"),
            both(b"\r\n", b"ERROR\r\n"),
            both(b"set foo 0 0\r\n", b"ERROR\r\n"),
            both(
                b"stats\r\n",
                b"STAT pid {#}\r\nSTAT uptime {#}\r\n{...}END\r\n",
            ),
            both(
                b"stats settings\r\n",
                b"STAT maxbytes {#}\r\nSTAT maxconns {#}\r\n{...}END\r\n",
            ),
            both(b"stats reset\r\n", b"RESET\r\n"),
            both(b"stats bogus\r\n", b"ERROR\r\n"),
            // memcached's strtol-testing.t and its slabs commands.
            both(b"verbosity 1 2\r\n", b"OK\r\n"),
            both(
                b"verbosity invalid\r\n",
                b"CLIENT_ERROR bad command line format\r\n",
            ),
            both(b"slabs automove 1\r\n", b"OK\r\n"),
            both(b"slabs automove 3\r\n", b"ERROR\r\n"),
            both(
                b"slabs automove invalid\r\n",
                b"CLIENT_ERROR bad command line format\r\n",
            ),
            both(
                b"slabs reassign 1 1\r\n",
                b"SAME src and dst class are identical\r\n",
            ),
            both(
                b"slabs reassign 40 1\r\n",
                b"BADCLASS invalid src or dst class id\r\n",
            ),
            both(
                b"slabs reassign 1 2\r\n",
                b"NOSPARE source class has no spare pages\r\n",
            ),
            both(b"slabs\r\n", b"ERROR\r\n"),
            both(b"flush_all 0\r\n", b"OK\r\n"),
            both(
                b"flush_all abc\r\n",
                b"CLIENT_ERROR invalid exptime argument\r\n",
            ),
            both(b"mn\r\n", b"MN\r\n"),
        ],
    );
}

#[test]
fn meta_commands() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"ms m 3 T0 F5\r\nabc\r\n", b"HD\r\n"),
            both(b"mg m v\r\n", b"VA 3\r\nabc\r\n"),
            both(b"mg m s v f\r\n", b"VA 3 s3 f5\r\nabc\r\n"),
            both(b"mg m k v\r\n", b"VA 3 km\r\nabc\r\n"),
            both(b"mg m\r\n", b"HD\r\n"),
            both(b"mg m f t\r\n", b"HD f5 t-1\r\n"),
            both(b"mg m c\r\n", b"HD c{$mc}\r\n"),
            both(b"gets m\r\n", b"VALUE m 5 3 {$mc}\r\nabc\r\nEND\r\n"),
            both(b"mg m O123 k\r\n", b"HD O123 km\r\n"),
            both(b"mg m v q\r\n", b"VA 3\r\nabc\r\n"),
            both(b"mg nope v\r\n", b"EN\r\n"),
            both(b"mg nope v q\r\n", b""),
            both(b"mg bQ== b v\r\n", b"VA 3\r\nabc\r\n"),
            // memcached 1.6.18 echoes the decoded key here; later versions (and the protocol
            // text) return it base64-encoded followed by `b`.
            koshka(b"mg bQ== b k v\r\n", b"VA 3 kbQ== b\r\nabc\r\n"),
            koshka(b"mg bQ== k b v\r\n", b"VA 3 kbQ== b\r\nabc\r\n"),
            both(b"mg m zz\r\n", b"CLIENT_ERROR invalid flag\r\n"),
            both(b"ms m 3 C999999\r\nxyz\r\n", b"EX\r\n"),
            both(b"ms m 3 C{$mc} c\r\nxyz\r\n", b"HD c{$mc2}\r\n"),
            both(b"mg m c v\r\n", b"VA 3 c{$mc2}\r\nxyz\r\n"),
            both(b"ms m 2 MA\r\n12\r\n", b"HD\r\n"),
            both(b"ms m 2 MP\r\n00\r\n", b"HD\r\n"),
            both(b"mg m v\r\n", b"VA 7\r\n00xyz12\r\n"),
            both(b"ms nope 1 MA\r\nx\r\n", b"NS\r\n"),
            both(b"ms nope 1 MR\r\nx\r\n", b"NS\r\n"),
            both(b"ms m 1 ME\r\nx\r\n", b"NS\r\n"),
            both(b"ms fresh 1 ME\r\nx\r\n", b"HD\r\n"),
            both(
                b"ms m 1 MX\r\nx\r\n",
                b"CLIENT_ERROR invalid mode for ms M token\r\n",
            ),
            both(b"ms m 1 q\r\nx\r\n", b""),
            both(b"ms m 1 k O9\r\ny\r\n", b"HD km O9\r\n"),
            both(b"ms m 2 T100 F7\r\nhi\r\n", b"HD\r\n"),
            both(b"mg m t f v\r\n", b"VA 2 t{#} f7\r\nhi\r\n"),
            both(b"mg m T30 t\r\n", b"HD t30\r\n"),
            both(b"ms m 2\r\nhi\r\n", b"HD\r\n"),
            both(b"me m\r\n", b"ME m exp=-1 la={#} cas={#} fetch={*}\r\n"),
            both(b"me nope\r\n", b"EN\r\n"),
            both(b"mg m c\r\n", b"HD c{$mc3}\r\n"),
            both(b"md m C999999\r\n", b"EX\r\n"),
            both(b"md m C{$mc3} k O5\r\n", b"HD km O5\r\n"),
            both(b"md m\r\n", b"NF\r\n"),
            both(b"md m q\r\n", b"NF\r\n"),
            both(b"md fresh q\r\n", b""),
            both(b"mg fresh v\r\n", b"EN\r\n"),
            both(b"ma cnt\r\n", b"NF\r\n"),
            both(b"ma cnt N0 J10 v\r\n", b"VA 2\r\n10\r\n"),
            both(b"ma cnt v\r\n", b"VA 2\r\n11\r\n"),
            both(b"ma cnt D5 v\r\n", b"VA 2\r\n16\r\n"),
            both(b"ma cnt MD D20 v\r\n", b"VA 1\r\n0\r\n"),
            both(b"ma cnt\r\n", b"HD\r\n"),
            both(b"ma cnt q\r\n", b""),
            both(b"ma cnt t v\r\n", b"VA 1 t-1\r\n3\r\n"),
            both(b"ma cnt c v\r\n", b"VA 1 c{$cc}\r\n4\r\n"),
            both(b"ma cnt C999999\r\n", b"EX\r\n"),
            both(b"ma cnt C{$cc} M+ v\r\n", b"VA 1\r\n5\r\n"),
            both(
                b"ma cnt MX\r\n",
                b"CLIENT_ERROR invalid mode for ma M token\r\n",
            ),
            both(b"ms str 3\r\nabc\r\n", b"HD\r\n"),
            both(
                b"ma str\r\n",
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            ),
            both(b"ma cnt k O1 v\r\n", b"VA 1 kcnt O1\r\n6\r\n"),
            both(b"ma cnt2 N100 J7 t v\r\n", b"VA 1 t{#}\r\n7\r\n"),
            both(b"mn\r\n", b"MN\r\n"),
        ],
    );
}

#[test]
fn malformed_requests() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"set k 0 0 3\r\nabcd\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
            both(b"get k\r\n", b"END\r\n"),
            both(b"set k 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
            // memcached's issue_70.t: a length past its signed 32-bit field is a bad line,
            // and nothing is swallowed (the `mn` behind it answers).
            both(b"set k 0 0 4294967295\r\n", b"CLIENT_ERROR bad command line format\r\n"),
            both(b"set k 0 0 2147483647\r\n", b"CLIENT_ERROR bad command line format\r\n"),
            both(b"ms k 4294967295\r\n", b"CLIENT_ERROR bad command line format\r\n"),
            both(b"set k abc 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
            both(
                b"set kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk 0 0 1\r\nx\r\n",
                b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
            ),
            both(
                b"get kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\r\n",
                b"CLIENT_ERROR bad command line format\r\n",
            ),
            both(b"incr\r\n", b"ERROR\r\n"),
            both(b"touch k\r\n", b"ERROR\r\n"),
            both(b"delete\r\n", b"ERROR\r\n"),
            both(b"cas k 0 0 1\r\n", b"ERROR\r\n"),
            both(b"set rel 0 2592000 1\r\nx\r\n", b"STORED\r\n"),
            both(b"get rel\r\n", b"VALUE rel 0 1\r\nx\r\nEND\r\n"),
            both(b"set abs 0 2592001 1\r\nx\r\n", b"STORED\r\n"),
            both(b"get abs\r\n", b"END\r\n"),
        ],
    );
}

/// A value over the size limit is refused and its data block swallowed, so the stream stays in
/// sync.
#[test]
fn too_large_value() {
    let target = Target::start();
    let mut conn = Conn::open(target.port());
    let size = 2 * 1024 * 1024;
    let mut request = format!("set big 0 0 {size}\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', size));
    request.extend_from_slice(b"\r\nget big\r\n");
    assert_eq!(
        show(&conn.exchange(&request)),
        show(b"SERVER_ERROR object too large for cache\r\nEND\r\n")
    );
}

/// memcached unlinks the old item when a `set` is refused as too large, so a failed update
/// cannot leave a stale value readable. koshka keeps the old value (reported bug: the
/// connection drops `Parsed::Bad { error: TooLarge }` in `koshka-server/src/conn.rs`
/// without touching the key).
#[test]
fn too_large_set_removes_the_old_value() {
    let target = Target::start();
    let mut conn = Conn::open(target.port());
    assert_eq!(conn.exchange(b"set big 0 0 3\r\nold\r\n"), b"STORED\r\n");
    let size = 2 * 1024 * 1024;
    let mut request = format!("set big 0 0 {size}\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', size));
    request.extend_from_slice(b"\r\nget big\r\n");
    assert_eq!(
        show(&conn.exchange(&request)),
        show(b"SERVER_ERROR object too large for cache\r\nEND\r\n")
    );
}

/// The stats groups memcached tools read answer in memcached's shape, and `stats reset`
/// resets (memcached's stats-detail.t, issue_29.t, issue_42.t).
#[test]
fn stats_groups() {
    let target = Target::start();
    run_table(
        target.port(),
        &[
            both(b"stats detail dump\r\n", b"END\r\n"),
            both(b"stats detail on\r\n", b"OK\r\n"),
            both(b"set foo:1 0 0 1\r\nx\r\n", b"STORED\r\n"),
            both(
                b"get foo:1 foo:2 plain\r\n",
                b"VALUE foo:1 0 1\r\nx\r\nEND\r\n",
            ),
            both(b"delete foo:3\r\n", b"NOT_FOUND\r\n"),
            both(
                b"stats detail dump\r\n",
                b"PREFIX foo get 2 hit 1 set 1 del 1\r\nEND\r\n",
            ),
            both(b"stats detail off\r\n", b"OK\r\n"),
            both(b"get foo:1\r\n", b"VALUE foo:1 0 1\r\nx\r\nEND\r\n"),
            both(
                b"stats detail dump\r\n",
                b"PREFIX foo get 2 hit 1 set 1 del 1\r\nEND\r\n",
            ),
            both(
                b"stats detail\r\n",
                b"CLIENT_ERROR usage: stats detail on|off|dump\r\n",
            ),
            both(b"set issue29 0 0 0\r\n\r\n", b"STORED\r\n"),
            both(
                b"stats slabs\r\n",
                b"STAT 1:chunk_size 96\r\nSTAT 1:chunks_per_page 10922\r\n\
                  STAT 1:total_pages 1\r\nSTAT 1:total_chunks 10922\r\n\
                  STAT 1:used_chunks 2\r\nSTAT 1:free_chunks 10920\r\n{...}\
                  STAT active_slabs 1\r\nSTAT total_malloced 1048576\r\nEND\r\n",
            ),
            both(
                b"stats items\r\n",
                b"STAT items:1:number 2\r\n{...}STAT items:1:mem_requested {#}\r\n\
                  {...}STAT items:1:hits_to_temp 0\r\nEND\r\n",
            ),
            both(
                b"stats conns\r\n",
                b"{...}STAT {#}:addr tcp:127.0.0.1:{#}\r\nSTAT {#}:listen_addr tcp:{*}\r\n\
                  STAT {#}:state conn_parse_cmd\r\n{...}END\r\n",
            ),
            // memcached keeps the size histogram only after `stats sizes_enable`.
            koshka(b"stats sizes\r\n", b"STAT 64 2\r\nEND\r\n"),
            both(b"stats reset\r\n", b"RESET\r\n"),
            both(b"stats detail dump\r\n", b"END\r\n"),
            both(
                b"stats\r\n",
                b"{...}STAT cmd_get 0\r\n{...}STAT get_hits 0\r\n{...}END\r\n",
            ),
        ],
    );
}

/// memcached hangs up without a reply on an HTTP request line (malicious-commands.t) and on a
/// command other than a get still without its newline after 2048 bytes (getset.t).
#[test]
fn hangs_up_on_what_is_not_memcached() {
    let target = Target::start();
    let port = target.port();
    for line in [
        &b"GET / HTTP/1.0\r\n"[..],
        b"PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1\r\n",
        b"DELETE HTTP/1.1\r\n",
    ] {
        let mut conn = Conn::open(port);
        conn.send(line);
        assert_eq!(show(&conn.read_to_close()), "", "{}", show(line));
    }
    let spaces = " ".repeat(2048);
    let mut conn = Conn::open(port);
    conn.send(format!("get {spaces} manyspaces").as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(conn.exchange(b"\r\n"), b"END\r\n", "a long get waits");
    conn.send(format!("incr {spaces} manyspaces 1").as_bytes());
    assert_eq!(show(&conn.read_to_close()), "");
}

/// `flush_all <delay>` leaves items readable now and removes them once the delay passed.
#[test]
fn flush_all_with_delay() {
    let target = Target::start();
    let port = target.port();
    run_table(
        port,
        &[
            both(b"set d 0 0 1\r\nx\r\n", b"STORED\r\n"),
            both(b"flush_all 2\r\n", b"OK\r\n"),
            both(b"get d\r\n", b"VALUE d 0 1\r\nx\r\nEND\r\n"),
        ],
    );
    let mut conn = Conn::open(port);
    let started = Instant::now();
    loop {
        let reply = conn.exchange(b"get d\r\n");
        if reply == b"END\r\n" {
            break;
        }
        assert_eq!(reply, b"VALUE d 0 1\r\nx\r\nEND\r\n");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "flush_all 2 did not take effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "flush_all 2 acted at once"
    );
}

/// `quit` closes the connection after earlier replies were sent.
#[test]
fn quit_closes() {
    let target = Target::start();
    let mut conn = Conn::open(target.port());
    conn.send(b"set q 0 0 1\r\nx\r\nquit\r\nget q\r\n");
    assert_eq!(conn.read_to_close(), b"STORED\r\n");
    // The server is still serving others.
    let mut other = Conn::open(target.port());
    assert_eq!(other.exchange(b"get q\r\n"), b"VALUE q 0 1\r\nx\r\nEND\r\n");
}

/// Pipelined requests in one write are answered in order.
#[test]
fn pipelined_requests() {
    let target = Target::start();
    let mut conn = Conn::open(target.port());
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200 {
        request.extend_from_slice(
            format!("set p{i} {i} 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        expected.extend_from_slice(b"STORED\r\n");
    }
    for i in 0..200 {
        request.extend_from_slice(format!("get p{i}\r\n").as_bytes());
        expected.extend_from_slice(
            format!("VALUE p{i} {i} {}\r\n{i}\r\nEND\r\n", i.to_string().len()).as_bytes(),
        );
    }
    assert_eq!(show(&conn.exchange(&request)), show(&expected));
}

/// koshka extension: `get prefix*` returns every live key with the prefix, sorted.
#[test]
fn prefix_scan_is_koshka_only() {
    if reference() {
        return;
    }
    let target = Target::start();
    run_table(
        target.port(),
        &[
            koshka(b"set user:2 0 0 1\r\nb\r\n", b"STORED\r\n"),
            koshka(b"set user:1 1 0 1\r\na\r\n", b"STORED\r\n"),
            koshka(b"set other 0 0 1\r\nc\r\n", b"STORED\r\n"),
            koshka(b"set user:3 0 -1 1\r\nd\r\n", b"STORED\r\n"),
            koshka(
                b"get user:*\r\n",
                b"VALUE user:1 1 1\r\na\r\nVALUE user:2 0 1\r\nb\r\nEND\r\n",
            ),
            koshka(b"get nobody*\r\n", b"END\r\n"),
            koshka(
                b"get other user:1\r\n",
                b"VALUE other 0 1\r\nc\r\nVALUE user:1 1 1\r\na\r\nEND\r\n",
            ),
        ],
    );
}
