//! The `stats` groups memcached tools and exporters read besides the general one — `slabs`,
//! `items`, `sizes`, `conns`, `detail on|off|dump` — plus `stats reset` and the `slabs`
//! commands, answered in memcached's format with koshka's own figures.
//!
//! koshka has no slab allocator: every item is one allocation. `slabs` and `items` report
//! the kv engine's items grouped into memcached's default size classes by their real
//! footprint (`koshka_kv::classes`); the page figures say what memcached would hold for those
//! items in 1 MiB pages; fields for mechanisms koshka does not have (segmented LRU, item
//! ages, per-class command counters) read 0. docs/conformance.md lists every field.
//!
//! Besides rendering, this module owns two pieces of node state the groups need: the
//! per-prefix counters of `stats detail` ([`Detail`]) and the registry of open connections
//! behind `stats conns` ([`Connections`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use koshka_proto::reply;

use crate::{EngineSlot, Node};

/// The key prefix delimiter of `stats detail` (memcached's `-D` default).
const PREFIX_DELIMITER: u8 = b':';

/// Most key prefixes `stats detail` counts. memcached sets no bound; past this one, keys with
/// a new prefix are not counted (and `detail_prefixes_dropped` in the dump's last line says
/// how many), so a client inventing prefixes cannot grow the node's memory without limit.
pub const DETAIL_PREFIXES_MAX: usize = 10_000;

/// Answers `stats <group>` for the groups of this module, appending the whole reply to `out`.
/// Returns `false` (nothing appended) if `group` is not one of them.
pub(crate) fn render(node: &Node, slot: &EngineSlot, group: &[u8], out: &mut Vec<u8>) -> bool {
    let (name, args) = match group.iter().position(|b| *b == b' ') {
        Some(at) => (&group[..at], group[at + 1..].trim_ascii()),
        None => (group, &b""[..]),
    };
    match (name, args) {
        (b"slabs" | b"items" | b"sizes", b"") => {
            // The engine's own figures (kv: its items by memcached size class); an engine
            // without the group answers an empty list.
            let group = String::from_utf8_lossy(name);
            for (name, value) in slot.engine.stats_group(&group).unwrap_or_default() {
                reply::stat(out, &name, &value);
            }
            out.extend_from_slice(reply::END);
        }
        (b"conns", b"") => node.conns.render(out),
        (b"detail", args) => node.detail.command(args, out),
        _ => return false,
    }
    true
}

fn stat_number(out: &mut Vec<u8>, name: &str, value: u64) {
    let mut digits = itoa::Buffer::new();
    reply::stat(out, name, digits.format(value));
}

/// `stats reset`: zeroes every counter of the node and of the engine behind the port (what is
/// stored and open stays), and the prefix counters.
pub(crate) fn reset(node: &Node, slot: &EngineSlot) {
    for counters in node.counters.snapshot() {
        counters.reset();
    }
    slot.engine.reset_stats();
    node.detail.clear();
}

/// `slabs automove <mode>`: accepted as memcached does; koshka has no pages to move.
pub(crate) fn slabs_automove(out: &mut Vec<u8>) {
    out.extend_from_slice(reply::OK);
}

/// `slabs reassign <source> <destination>`: memcached's answers for the class ids (0 is its
/// global page pool); for valid ones, `NOSPARE`, which is always true of koshka.
pub(crate) fn slabs_reassign(source: i32, destination: i32, out: &mut Vec<u8>) {
    let valid = |class: i32| {
        usize::try_from(class).is_ok_and(|class| class <= koshka_limits::MEMCACHED_SLAB_CLASSES)
    };
    let answer: &[u8] = if source == destination {
        b"SAME src and dst class are identical\r\n"
    } else if !valid(source) || !valid(destination) {
        b"BADCLASS invalid src or dst class id\r\n"
    } else {
        b"NOSPARE source class has no spare pages\r\n"
    };
    out.extend_from_slice(answer);
}

// ---------------------------------------------------------------------------------------------
// stats detail

/// Counts of one key prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PrefixCounts {
    get: u64,
    hit: u64,
    set: u64,
    delete: u64,
}

#[derive(Debug, Default)]
struct Prefixes {
    counts: HashMap<Vec<u8>, PrefixCounts>,
    /// Keys not counted because [`DETAIL_PREFIXES_MAX`] prefixes were already tracked.
    dropped: u64,
}

/// Per-prefix counters of `stats detail`: off until `stats detail on`, as in memcached. While
/// off, recording costs one relaxed load per command.
#[derive(Debug, Default)]
pub struct Detail {
    enabled: AtomicBool,
    prefixes: Mutex<Prefixes>,
}

impl Detail {
    fn lock(&self) -> MutexGuard<'_, Prefixes> {
        self.prefixes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, key: &[u8], bump: impl FnOnce(&mut PrefixCounts)) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        // Keys without the delimiter have no prefix and are not counted (as memcached).
        let Some(end) = key.iter().position(|b| *b == PREFIX_DELIMITER) else {
            return;
        };
        let prefix = &key[..end];
        let mut prefixes = self.lock();
        if let Some(counts) = prefixes.counts.get_mut(prefix) {
            bump(counts);
        } else if prefixes.counts.len() < DETAIL_PREFIXES_MAX {
            bump(prefixes.counts.entry(prefix.to_vec()).or_default());
        } else {
            prefixes.dropped += 1;
        }
    }

    /// A key looked up by a retrieval command, and whether it was found.
    pub fn get(&self, key: &[u8], hit: bool) {
        self.record(key, |counts| {
            counts.get += 1;
            counts.hit += u64::from(hit);
        });
    }

    /// A store command for a key (counted whether or not it stored, as memcached).
    pub fn set(&self, key: &[u8]) {
        self.record(key, |counts| counts.set += 1);
    }

    /// A delete of a key (counted whether or not it existed, as memcached).
    pub fn delete(&self, key: &[u8]) {
        self.record(key, |counts| counts.delete += 1);
    }

    /// Forgets every prefix (`stats reset`).
    pub fn clear(&self) {
        *self.lock() = Prefixes::default();
    }

    /// `stats detail on|off|dump`.
    fn command(&self, args: &[u8], out: &mut Vec<u8>) {
        match args {
            b"on" | b"off" => {
                self.enabled.store(args == b"on", Ordering::Relaxed);
                out.extend_from_slice(reply::OK);
            }
            b"dump" => self.dump(out),
            _ => out.extend_from_slice(b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        }
    }

    /// One `PREFIX <prefix> get <n> hit <n> set <n> del <n>` line per prefix, sorted, then `END`.
    fn dump(&self, out: &mut Vec<u8>) {
        let prefixes = self.lock();
        let sorted: BTreeMap<_, _> = prefixes.counts.iter().collect();
        for (prefix, counts) in sorted {
            out.extend_from_slice(b"PREFIX ");
            out.extend_from_slice(prefix);
            let line = format!(
                " get {} hit {} set {} del {}\r\n",
                counts.get, counts.hit, counts.set, counts.delete
            );
            out.extend_from_slice(line.as_bytes());
        }
        if prefixes.dropped > 0 {
            stat_number(out, "detail_prefixes_dropped", prefixes.dropped);
        }
        out.extend_from_slice(reply::END);
    }
}

// ---------------------------------------------------------------------------------------------
// stats conns

/// One open connection (or listening socket) as `stats conns` shows it.
#[derive(Debug)]
pub struct ConnInfo {
    fd: i32,
    peer: SocketAddr,
    /// The listening address the connection came in on (`None`: this is the listener).
    local: Option<SocketAddr>,
    /// Unix time of the last command batch.
    last_command: AtomicU32,
    /// Executing commands now (between reading a batch and writing its replies).
    busy: AtomicBool,
}

impl ConnInfo {
    /// A batch of commands arrived: the connection is busy until [`ConnInfo::idle`].
    pub fn busy(&self) {
        self.last_command
            .store(koshka_engine::unix_now(), Ordering::Relaxed);
        self.busy.store(true, Ordering::Relaxed);
    }

    /// The batch's replies are written; the connection waits for the next one.
    pub fn idle(&self) {
        self.busy.store(false, Ordering::Relaxed);
    }
}

/// Open connections and listening sockets, for `stats conns`. Touched at connect, at close
/// and by `stats conns`; per command only the connection's own atomics change.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<BTreeMap<u64, Arc<ConnInfo>>>,
    next_id: AtomicU64,
}

/// Keeps a connection listed until dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a Connections,
    id: u64,
    info: Arc<ConnInfo>,
}

impl std::ops::Deref for Registration<'_> {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.info
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnInfo>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, info: ConnInfo) -> (u64, Arc<ConnInfo>) {
        // Ids, not descriptors, name the entries: a closed descriptor is reused at once.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(info);
        self.lock().insert(id, info.clone());
        (id, info)
    }

    /// Lists a client connection while the returned guard lives.
    pub fn register(&self, stream: &tokio::net::TcpStream) -> Registration<'_> {
        use std::os::fd::AsRawFd;
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let (id, info) = self.insert(ConnInfo {
            fd: stream.as_raw_fd(),
            peer: stream.peer_addr().unwrap_or(unknown),
            local: Some(stream.local_addr().unwrap_or(unknown)),
            last_command: AtomicU32::new(koshka_engine::unix_now()),
            busy: AtomicBool::new(false),
        });
        Registration {
            registry: self,
            id,
            info,
        }
    }

    /// Lists a listening socket for the node's lifetime.
    pub fn listening(&self, listener: &std::net::TcpListener) {
        use std::os::fd::AsRawFd;
        if let Ok(addr) = listener.local_addr() {
            self.insert(ConnInfo {
                fd: listener.as_raw_fd(),
                peer: addr,
                local: None,
                last_command: AtomicU32::new(koshka_engine::unix_now()),
                busy: AtomicBool::new(false),
            });
        }
    }

    /// memcached's lines per socket, by descriptor: `addr`, `listen_addr` (connections),
    /// `state`, `secs_since_last_cmd`; then `END`.
    fn render(&self, out: &mut Vec<u8>) {
        let now = koshka_engine::unix_now();
        let mut all: Vec<Arc<ConnInfo>> = self.lock().values().cloned().collect();
        all.sort_by_key(|info| info.fd);
        for info in all {
            let fd = info.fd;
            reply::stat(out, &format!("{fd}:addr"), &format!("tcp:{}", info.peer));
            let state = match info.local {
                None => "conn_listening",
                Some(local) => {
                    reply::stat(out, &format!("{fd}:listen_addr"), &format!("tcp:{local}"));
                    if info.busy.load(Ordering::Relaxed) {
                        "conn_parse_cmd"
                    } else {
                        "conn_waiting"
                    }
                }
            };
            reply::stat(out, &format!("{fd}:state"), state);
            let idle = now.saturating_sub(info.last_command.load(Ordering::Relaxed));
            stat_number(out, &format!("{fd}:secs_since_last_cmd"), u64::from(idle));
        }
        out.extend_from_slice(reply::END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    #[test]
    fn detail_counts_prefixes_only_while_on() {
        // memcached's stats-detail.t, against the counters.
        let detail = Detail::default();
        let mut out = Vec::new();
        detail.command(b"dump", &mut out);
        assert_eq!(text(&out), "END\r\n");
        detail.set(b"foo:1");
        out.clear();
        detail.command(b"on", &mut out);
        assert_eq!(text(&out), "OK\r\n");
        detail.set(b"foo:123");
        detail.get(b"foo:123", true);
        detail.get(b"foo:124", false);
        detail.delete(b"foo:125");
        detail.get(b"plain", true);
        detail.get(b"bar:1", false);
        out.clear();
        detail.command(b"dump", &mut out);
        assert_eq!(
            text(&out),
            "PREFIX bar get 1 hit 0 set 0 del 0\r\n\
             PREFIX foo get 2 hit 1 set 1 del 1\r\nEND\r\n"
        );
        out.clear();
        detail.command(b"off", &mut out);
        detail.get(b"foo:123", true);
        detail.clear();
        detail.command(b"dump", &mut out);
        assert_eq!(text(&out), "OK\r\nEND\r\n");
        out.clear();
        detail.command(b"", &mut out);
        assert_eq!(
            text(&out),
            "CLIENT_ERROR usage: stats detail on|off|dump\r\n"
        );
    }

    #[test]
    fn detail_prefixes_are_bounded() {
        let detail = Detail::default();
        detail.enabled.store(true, Ordering::Relaxed);
        for i in 0..=DETAIL_PREFIXES_MAX {
            detail.set(format!("p{i}:k").as_bytes());
        }
        detail.set(b"p0:again");
        let prefixes = detail.lock();
        assert_eq!(prefixes.counts.len(), DETAIL_PREFIXES_MAX);
        assert_eq!(prefixes.dropped, 1);
        assert_eq!(prefixes.counts[&b"p0"[..]].set, 2);
    }

    #[test]
    fn slabs_reassign_answers_like_memcached() {
        let answer = |source, destination| {
            let mut out = Vec::new();
            slabs_reassign(source, destination, &mut out);
            text(&out)
        };
        assert_eq!(answer(2, 2), "SAME src and dst class are identical\r\n");
        assert_eq!(answer(40, 1), "BADCLASS invalid src or dst class id\r\n");
        assert_eq!(answer(-1, 5), "BADCLASS invalid src or dst class id\r\n");
        assert_eq!(answer(0, 39), "NOSPARE source class has no spare pages\r\n");
    }
}
