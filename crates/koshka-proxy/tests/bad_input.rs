//! Hostile and broken clients against a real proxy in front of two in-process shards, each
//! case compared with what one node (`koshka serve`'s own server) answers to the same bytes:
//! the node's version of these checks is `crates/koshka/tests/bad_input.rs`. Over-long keys
//! and lines, values over the proxy's and over the nodes' limit, bad data chunks, binary
//! garbage, unknown commands, too many keys in one get, and a client that pipelines big gets
//! and never reads.
//!
//! After every abuse the proxy must still be alive and serving other connections.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Shards;
use koshka_limits::{
    KEY_LEN_MAX, LINE_LEN_MAX, MULTIGET_KEYS_MAX, UNTERMINATED_LINE_LEN_MAX, VALUE_SIZE_DEFAULT,
};
use rand::{Rng, SeedableRng};

/// How long a test waits for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking client connection.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until `terminator` has arrived; returns everything through it.
    fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(at) = find(&self.pending, terminator) {
                let rest = self.pending.split_off(at + terminator.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {}: {}",
                show(terminator),
                show(&self.pending)
            );
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed while waiting for {}", show(terminator)),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("waiting for {}: {e}", show(terminator)),
            }
        }
    }

    /// Sends `request` and `mn`; returns the reply before `MN` (`request` holds no `mn`).
    fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(b"mn\r\n");
        self.send(&bytes);
        let mut reply = self.read_until(b"MN\r\n");
        reply.truncate(reply.len() - 4);
        reply
    }

    /// Reads until the peer closes (a reset counts as closed); what arrived.
    fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            assert!(
                Instant::now() < deadline,
                "not closed: {}",
                show(&self.pending)
            );
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection not closed within {REPLY_TIMEOUT:?}")
                }
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.pending)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes for assertion messages: printable, escapes visible, long runs abbreviated.
fn show(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).escape_debug().collect();
    if text.len() > 400 {
        let cut = (0..=400).rev().find(|i| text.is_char_boundary(*i)).unwrap();
        format!("{}…[{} bytes]", &text[..cut], bytes.len())
    } else {
        text
    }
}

/// Every reply line is an error line: `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`.
fn all_error_lines(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .all(|line| {
            line == b"ERROR\r"
                || (line.starts_with(b"CLIENT_ERROR ") || line.starts_with(b"SERVER_ERROR "))
                    && line.ends_with(b"\r")
        })
}

/// Asserts that a fresh connection gets a `version` reply.
fn assert_serving(addr: SocketAddr) {
    let reply = Conn::open(addr).exchange(b"version\r\n");
    assert!(reply.starts_with(b"VERSION "), "got {}", show(&reply));
}

/// Two shards behind a proxy (`edit` adjusts the proxy's map), and one node holding
/// everything: the reference. `node_value_max` lowers every node's value limit.
struct Setup {
    proxy: SocketAddr,
    node: SocketAddr,
    _running: koshka_proxy::Running,
    _shards: Shards,
    _node: koshka_node::Running,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(node_value_max: Option<u64>, edit: impl FnOnce(&mut koshka_proxy::Config)) -> Setup {
        let shards = match node_value_max {
            None => Shards::start(2),
            Some(max) => Shards::start_configured(2, |config| {
                config.server.value_size_max = koshka_node::config::Size(max);
            }),
        };
        let mut config = shards.proxy_config();
        edit(&mut config);
        let running = koshka_proxy::start(config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut node_config = common::node_config(dir.path(), 0, 1);
        if let Some(max) = node_value_max {
            node_config.server.value_size_max = koshka_node::config::Size(max);
        }
        let node = koshka_node::start(node_config, &koshka_node::registry::builtin()).unwrap();
        Setup {
            proxy: running.addr("kv").unwrap(),
            node: node.addr("kv").unwrap(),
            _running: running,
            _shards: shards,
            _node: node,
            _dir: dir,
        }
    }

    /// Sends `request` (then `mn`) on `proxy` and on `node`; asserts equal replies, returns it.
    fn same(&self, proxy: &mut Conn, node: &mut Conn, request: &[u8]) -> Vec<u8> {
        let from_proxy = proxy.exchange(request);
        let from_node = node.exchange(request);
        assert_eq!(
            show(&from_proxy),
            show(&from_node),
            "proxy and node differ on {}",
            show(request)
        );
        from_proxy
    }

    fn conns(&self) -> (Conn, Conn) {
        (Conn::open(self.proxy), Conn::open(self.node))
    }
}

#[test]
fn unknown_commands_are_errors() {
    let setup = Setup::start(None, |_| {});
    let (mut proxy, mut node) = setup.conns();
    for request in [
        &b"bogus\r\n"[..],
        b"GET k\r\n",
        b"sett k 0 0 1\r\n",
        b"\r\n",
        b"get\r\n",
        b"set k\r\n",
        b"incr k\r\n",
    ] {
        let reply = setup.same(&mut proxy, &mut node, request);
        assert!(all_error_lines(&reply), "{}", show(&reply));
    }
    assert_eq!(
        setup.same(&mut proxy, &mut node, b"bogus\r\n"),
        b"ERROR\r\n"
    );
    assert_serving(setup.proxy);
}

#[test]
fn key_length_limits() {
    let setup = Setup::start(None, |_| {});
    let (mut proxy, mut node) = setup.conns();
    let at = "k".repeat(KEY_LEN_MAX);
    let over = "k".repeat(KEY_LEN_MAX + 1);
    assert_eq!(
        setup.same(
            &mut proxy,
            &mut node,
            format!("set {at} 0 0 1\r\nx\r\n").as_bytes()
        ),
        b"STORED\r\n"
    );
    assert_eq!(
        setup.same(&mut proxy, &mut node, format!("get {at}\r\n").as_bytes()),
        format!("VALUE {at} 0 1\r\nx\r\nEND\r\n").as_bytes()
    );
    for request in [
        format!("get {over}\r\n"),
        format!("get {at} {over}\r\n"),
        format!("delete {over}\r\n"),
        format!("incr {over} 1\r\n"),
        format!("touch {over} 1\r\n"),
        format!("mg {over} v\r\n"),
        // A refused store line is followed by its data line, which is not a command.
        format!("set {over} 0 0 1\r\nx\r\n"),
    ] {
        let reply = setup.same(&mut proxy, &mut node, request.as_bytes());
        assert!(
            reply.starts_with(b"CLIENT_ERROR bad command line format\r\n"),
            "{}",
            show(&reply)
        );
    }
    assert_serving(setup.proxy);
}

#[test]
fn too_many_keys_in_one_get() {
    let setup = Setup::start(None, |_| {});
    let (mut proxy, mut node) = setup.conns();
    setup.same(&mut proxy, &mut node, b"set k7 0 0 1\r\na\r\n");
    setup.same(&mut proxy, &mut node, b"set k9999 0 0 1\r\nb\r\n");
    let keys = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let line = format!("get {}\r\n", keys(MULTIGET_KEYS_MAX));
    assert!(line.len() < LINE_LEN_MAX);
    // At the limit: every key is looked up (the proxy splits it over both shards).
    let reply = proxy.exchange(line.as_bytes());
    let mut values: Vec<&[u8]> = reply
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"VALUE"))
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        [&b"VALUE k7 0 1\r"[..], b"VALUE k9999 0 1\r"],
        "{}",
        show(&reply)
    );
    assert!(reply.ends_with(b"END\r\n"), "{}", show(&reply));
    for command in ["get", "gets", "gat 0"] {
        let line = format!("{command} {}\r\n", keys(MULTIGET_KEYS_MAX + 1));
        assert_eq!(
            setup.same(&mut proxy, &mut node, line.as_bytes()),
            b"CLIENT_ERROR too many keys\r\n",
            "{command}"
        );
    }
    assert_eq!(
        setup.same(&mut proxy, &mut node, b"get k7\r\n"),
        b"VALUE k7 0 1\r\na\r\nEND\r\n"
    );
}

#[test]
fn over_long_lines_close_the_connection() {
    let setup = Setup::start(None, |_| {});
    for addr in [setup.proxy, setup.node] {
        // A retrieval line one byte over LINE_LEN_MAX (its newline left out, so every byte
        // was read when the peer closes: unread bytes would turn the close into a reset).
        let mut conn = Conn::open(addr);
        let mut over = b"get".to_vec();
        over.resize(LINE_LEN_MAX + 1, b' ');
        over.push(b'\r');
        conn.send(&over);
        assert_eq!(
            show(&conn.read_to_close()),
            show(b"CLIENT_ERROR line too long\r\n"),
            "{addr}"
        );
        // Any other command may wait for its newline only UNTERMINATED_LINE_LEN_MAX bytes:
        // past that the connection is closed without a reply, never left hanging.
        let mut conn = Conn::open(addr);
        let mut stats = b"stats ".to_vec();
        stats.resize(UNTERMINATED_LINE_LEN_MAX + 1, b'x');
        conn.send(&stats);
        std::thread::sleep(Duration::from_millis(100));
        conn.send(b"\r\n");
        assert_eq!(show(&conn.read_to_close()), "", "{addr}");
        // The same line still waiting for its newline, one byte longer than the longest
        // command that may wait: closed without the newline ever arriving.
        let mut conn = Conn::open(addr);
        stats.push(b'x');
        conn.send(&stats);
        assert_eq!(show(&conn.read_to_close()), "", "{addr}");
        // Binary noise without any newline: closed as well.
        let mut conn = Conn::open(addr);
        conn.send(&[0x80; 64 * 1024]);
        assert_eq!(show(&conn.read_to_close()), "", "{addr}");
        // At the limit it is a command (an unknown one).
        let mut conn = Conn::open(addr);
        let mut stats = b"stats ".to_vec();
        stats.resize(UNTERMINATED_LINE_LEN_MAX, b'x');
        stats.extend_from_slice(b"\r\n");
        assert_eq!(conn.exchange(&stats), b"ERROR\r\n", "{addr}");
        assert_serving(addr);
    }
}

#[test]
fn bad_data_chunks() {
    let setup = Setup::start(None, |_| {});
    let (mut proxy, mut node) = setup.conns();
    // One byte too many: the block does not end in CRLF where it should.
    let reply = setup.same(&mut proxy, &mut node, b"set k 0 0 3\r\nabcd\r\n");
    assert!(
        reply.starts_with(b"CLIENT_ERROR bad data chunk\r\n") && all_error_lines(&reply),
        "{}",
        show(&reply)
    );
    // Too few bytes: the next line is taken as data, then refused.
    let reply = setup.same(&mut proxy, &mut node, b"set k 0 0 5\r\nab\r\nget k\r\n");
    assert!(
        reply.starts_with(b"CLIENT_ERROR bad data chunk\r\n") && all_error_lines(&reply),
        "{}",
        show(&reply)
    );
    // Nothing was stored and the stream is back in sync.
    assert_eq!(setup.same(&mut proxy, &mut node, b"get k\r\n"), b"END\r\n");
    assert_eq!(
        setup.same(&mut proxy, &mut node, b"set k 0 0 2\r\nok\r\n"),
        b"STORED\r\n"
    );
    for line in [
        &b"set k x 0 1\r\n"[..],
        b"set k 0 x 1\r\n",
        b"set k 0 0 -1\r\n",
        b"set k 0 0 1x\r\n",
        b"cas k 0 0 1 x\r\n",
        b"set k 0 0 99999999999\r\n",
    ] {
        assert_eq!(
            setup.same(&mut proxy, &mut node, line),
            b"CLIENT_ERROR bad command line format\r\n",
            "{}",
            show(line)
        );
    }
    assert_eq!(
        setup.same(&mut proxy, &mut node, b"get k\r\n"),
        b"VALUE k 0 2\r\nok\r\nEND\r\n"
    );
}

#[test]
fn binary_garbage_gets_errors_and_proxy_survives() {
    let setup = Setup::start(None, |_| {});
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b6f_73686b61);
    for round in 0..40 {
        let len = rng.gen_range(1..4096);
        let mut garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Some rounds are mostly NULs and line ends.
        if round % 4 == 0 {
            for byte in &mut garbage {
                *byte = [0, 0, 0, b'\n', b'\r', b' '][usize::from(*byte) % 6];
            }
        }
        let mut request = garbage.clone();
        request.extend_from_slice(b"\r\nversion\r\n");
        let answer = |addr: SocketAddr| {
            let mut conn = Conn::open(addr);
            // The peer may close mid-write (a line it cannot resynchronise): that is fine.
            let _ = conn.stream.write_all(&request);
            let mut all = conn.read_to_close_or_version();
            let open = all.ends_with(b"\r\n") && find(&all, b"VERSION ").is_some();
            if let Some(at) = find(&all, b"VERSION ") {
                all.truncate(at);
            }
            (all, open)
        };
        let (from_proxy, proxy_open) = answer(setup.proxy);
        let (from_node, node_open) = answer(setup.node);
        assert!(
            all_error_lines(&from_proxy),
            "round {round}: non-error reply {} to garbage {}",
            show(&from_proxy),
            show(&garbage)
        );
        assert_eq!(
            (show(&from_proxy), proxy_open),
            (show(&from_node), node_open),
            "round {round}: proxy and node differ on {}",
            show(&garbage)
        );
    }
    assert_serving(setup.proxy);
}

impl Conn {
    /// Reads until a `VERSION …` line arrived or the peer closed.
    fn read_to_close_or_version(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(at) = find(&self.pending, b"VERSION ") {
                if find(&self.pending[at..], b"\r\n").is_some() {
                    return std::mem::take(&mut self.pending);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no reply: {}",
                show(&self.pending)
            );
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return std::mem::take(&mut self.pending),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A value over the proxy's own limit is refused by the proxy exactly as a node with that
/// limit refuses it: the block is swallowed (the stream stays in sync) and the old value is
/// removed.
#[test]
fn value_over_the_proxys_limit() {
    const LIMIT: usize = 64 * 1024;
    let setup = Setup::start(Some(LIMIT as u64), |config| {
        config.proxy.value_size_max = LIMIT;
    });
    let (mut proxy, mut node) = setup.conns();
    value_limit_cases(&setup, &mut proxy, &mut node, LIMIT);
}

/// A value the proxy accepts and a node refuses: the node's answer comes back and the
/// connection stays usable.
#[test]
fn value_over_the_nodes_limit() {
    const LIMIT: usize = 64 * 1024;
    let setup = Setup::start(Some(LIMIT as u64), |config| {
        config.proxy.value_size_max = VALUE_SIZE_DEFAULT;
    });
    let (mut proxy, mut node) = setup.conns();
    value_limit_cases(&setup, &mut proxy, &mut node, LIMIT);
}

fn value_limit_cases(setup: &Setup, proxy: &mut Conn, node: &mut Conn, limit: usize) {
    let at = vec![b'v'; limit];
    let mut request = format!("set at 0 0 {limit}\r\n").into_bytes();
    request.extend_from_slice(&at);
    request.extend_from_slice(b"\r\n");
    assert_eq!(setup.same(proxy, node, &request), b"STORED\r\n");
    let reply = setup.same(proxy, node, b"get at\r\n");
    assert_eq!(
        reply.len(),
        format!("VALUE at 0 {limit}\r\n").len() + limit + 7
    );
    for over in [limit + 1, 3 * 1024 * 1024] {
        let mut request = format!("set at 0 0 {over}\r\n").into_bytes();
        request.extend(std::iter::repeat_n(b'w', over));
        request.extend_from_slice(b"\r\nget at\r\n");
        // The refused set also removes the old value, and the swallowed block leaves the
        // stream in sync for the get behind it.
        assert_eq!(
            show(&setup.same(proxy, node, &request)),
            show(b"SERVER_ERROR object too large for cache\r\nEND\r\n"),
            "{over} bytes"
        );
        // Nothing of the swallowed block is left to be read as commands.
        assert_eq!(setup.same(proxy, node, b""), b"");
        let mut restore = format!("set at 0 0 {limit}\r\n").into_bytes();
        restore.extend_from_slice(&at);
        restore.extend_from_slice(b"\r\n");
        assert_eq!(setup.same(proxy, node, &restore), b"STORED\r\n");
    }
    // Meta set: the same limit.
    let mut request = format!("ms m {}\r\n", limit + 1).into_bytes();
    request.extend(std::iter::repeat_n(b'w', limit + 1));
    request.extend_from_slice(b"\r\n");
    assert_eq!(
        setup.same(proxy, node, &request),
        b"SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(
        setup.same(proxy, node, b"set after 0 0 2\r\nok\r\nget after\r\n"),
        b"STORED\r\nVALUE after 0 2\r\nok\r\nEND\r\n"
    );
}

/// A client that pipelines big gets and never reads is disconnected once its replies stay
/// unread for `write_stall_timeout_ms`; meanwhile the proxy holds at most one batch for it
/// and serves everybody else.
#[test]
fn reader_that_never_reads_is_dropped() {
    let setup = Setup::start(None, |config| {
        config.proxy.write_stall_timeout_ms = 300;
    });
    let value = vec![b'x'; 100 * 1024];
    let mut request = format!("set big 0 0 {}\r\n", value.len()).into_bytes();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n");
    assert_eq!(Conn::open(setup.proxy).exchange(&request), b"STORED\r\n");
    let mut hog = Conn::open(setup.proxy);
    // 4000 × 100 KiB = 400 MiB of replies, far beyond socket buffers.
    const GETS: usize = 4000;
    hog.send(&b"get big\r\n".repeat(GETS));
    // Others are served while the hog's replies pile up.
    let mut other = Conn::open(setup.proxy);
    for _ in 0..20 {
        assert!(other.exchange(b"version\r\n").starts_with(b"VERSION "));
        assert_eq!(other.exchange(b"get big\r\n").len(), request.len() + 5);
    }
    // The hog's stream ends after what the kernel had buffered.
    let started = Instant::now();
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    std::thread::sleep(Duration::from_millis(1500));
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hog not disconnected"
        );
        match hog.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < GETS * value.len(), "the hog got every reply");
    let stats = Conn::open(setup.proxy).exchange(b"stats proxy\r\n");
    let stats = String::from_utf8_lossy(&stats);
    assert!(stats.contains("STAT proxy_output_stalls 1\r\n"), "{stats}");
    assert_eq!(other.exchange(b"get nothing\r\n"), b"END\r\n");
}

#[test]
fn node_over_limit_leaves_other_shard_data() {
    // The stale-value delete goes to the key's own shard only: other keys stay.
    let setup = Setup::start(None, |config| {
        config.proxy.value_size_max = 1024;
    });
    let mut proxy = Conn::open(setup.proxy);
    let keys: Vec<String> = (0..20).map(|i| format!("keep{i}")).collect();
    for key in &keys {
        assert_eq!(
            proxy.exchange(format!("set {key} 0 0 1\r\nk\r\n").as_bytes()),
            b"STORED\r\n"
        );
    }
    let mut request = b"set keep0 0 0 2000\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'w', 2000));
    request.extend_from_slice(b"\r\n");
    assert_eq!(
        proxy.exchange(&request),
        b"SERVER_ERROR object too large for cache\r\n"
    );
    let reply = proxy.exchange(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let found = reply
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"VALUE"))
        .count();
    assert_eq!(found, keys.len() - 1, "{}", show(&reply));
}
