//! The kv memory limit is the node's, not a per-partition share: against the real
//! `koshka serve`, a value that fits the limit is stored on an empty server in both modes,
//! and a cache keeps storing under sustained writes of large values, evicting across
//! partitions. (The limit used to be split into 256 budgets: at 64 MiB nothing over 256 KiB
//! could be stored; memcached's chunked-items.t failed on it.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{show, Conn, Node};

const MIB: usize = 1024 * 1024;

fn set(conn: &mut Conn, key: &str, value: &[u8]) -> Vec<u8> {
    let mut request = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    request.extend_from_slice(value);
    request.extend_from_slice(b"\r\n");
    conn.exchange(&request)
}

fn stat(conn: &mut Conn, name: &str) -> u64 {
    let stats = conn.roundtrip(b"stats\r\n", b"END\r\n");
    let stats = String::from_utf8_lossy(&stats);
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("STAT {name} ")))
        .unwrap_or_else(|| panic!("no stat {name} in {stats}"))
        .parse()
        .unwrap()
}

#[test]
fn a_1_mib_value_fits_an_empty_64_mib_server_in_both_modes() {
    for mode in [&[][..], &["--cache"][..]] {
        let mut args = vec![
            "--engines",
            "kv",
            "--threads",
            "2",
            "--memory-limit",
            "64MiB",
        ];
        args.extend_from_slice(mode);
        let node = Node::start(&args);
        let mut conn = Conn::open(node.port("kv"));
        let value = vec![b'v'; MIB];
        assert_eq!(
            show(&set(&mut conn, "big", &value)),
            show(b"STORED\r\n"),
            "{mode:?}"
        );
        let reply = conn.roundtrip(b"get big\r\n", b"END\r\n");
        assert_eq!(
            reply.len(),
            "VALUE big 0 1048576\r\n".len() + MIB + 7,
            "{mode:?}"
        );
    }
}

#[test]
fn a_cache_keeps_storing_under_sustained_large_writes() {
    let node = Node::start(&[
        "--engines",
        "kv",
        "--threads",
        "2",
        "--memory-limit",
        "64MiB",
        "--cache",
    ]);
    let mut conn = Conn::open(node.port("kv"));
    let value = vec![b'w'; MIB - 1024];
    // 320 MiB through a 64 MiB cache: every write is stored and readable right after.
    for i in 0..320 {
        let key = format!("big{i}");
        assert_eq!(
            show(&set(&mut conn, &key, &value)),
            show(b"STORED\r\n"),
            "write {i}"
        );
        let reply = conn.roundtrip(format!("mg {key} s\r\n").as_bytes(), b"\r\n");
        assert_eq!(
            show(&reply),
            show(format!("HD s{}\r\n", value.len()).as_bytes()),
            "write {i}"
        );
    }
    assert!(stat(&mut conn, "evictions") >= 250);
    assert!(stat(&mut conn, "bytes") <= 64 * MIB as u64);
    assert!(
        stat(&mut conn, "curr_items") >= 50,
        "the cache stays nearly full"
    );
}

#[test]
fn a_persistent_server_refuses_only_past_the_whole_limit() {
    let node = Node::start(&[
        "--engines",
        "kv",
        "--threads",
        "2",
        "--memory-limit",
        "16MiB",
        "--durability",
        "none",
    ]);
    let mut conn = Conn::open(node.port("kv"));
    let value = vec![b'p'; 256 * 1024];
    let mut stored = 0;
    loop {
        let reply = set(&mut conn, &format!("k{stored}"), &value);
        if reply != b"STORED\r\n" {
            assert_eq!(
                show(&reply),
                show(b"SERVER_ERROR out of memory storing object\r\n")
            );
            break;
        }
        stored += 1;
        assert!(stored < 100, "the limit is never reached");
    }
    // 16 MiB holds 63 such items with their overhead.
    assert_eq!(stored, 63);
    let items = conn.roundtrip(b"stats items\r\n", b"END\r\n");
    assert!(
        String::from_utf8_lossy(&items).contains("outofmemory 1\r\n"),
        "{}",
        show(&items)
    );
}
