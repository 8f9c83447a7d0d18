//! Failover coordinated by etcd (`[replication] etcd`; `docs/replication.md`).
//!
//! Every node of a shard runs the same loop with one etcd lease of its own:
//!
//! * `<prefix>/<cluster>/shard/<i>/primary` — held by the primary, under its lease; the value
//!   names its replication address and every engine's client address (the proxy reads it);
//! * `<prefix>/<cluster>/shard/<i>/nodes/<replication addr>` — each node's log position
//!   (the sum over its engines), under its own lease.
//!
//! A node that finds the primary key held by another follows it. When the key is vacant
//! (the primary's lease expired), the candidates publish their positions, wait
//! [`SETTLE`], and the most advanced one (ties: the smallest address) creates the key and
//! promotes its engines; the others follow it. A primary renews its lease every
//! ttl / [`RENEW_DIVISOR`]; if no renewal succeeded for ttl × [`FENCE_FRACTION`] it fences
//! its engines (every write refused) — before the lease can expire at etcd, so before any
//! other node can take over. A fenced node whose lease did expire stays fenced (reads
//! only) until restarted; it then rejoins as a replica ([`koshka_binlog::repl::reconcile`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_etcd::Client;
use serde_json::json;

use crate::persist::HostPersistence;

/// A primary renews its lease every ttl / this.
pub const RENEW_DIVISOR: u32 = 6;

/// A primary fences itself when no renewal succeeded for this fraction of the ttl (the
/// lease lives at least the full ttl after the last renewal etcd processed).
pub const FENCE_FRACTION: f64 = 0.6;

/// How long candidates wait after a vacancy is seen, for every candidate's position to be
/// published, before the most advanced one takes the key.
pub const SETTLE: Duration = Duration::from_millis(300);

/// How often a follower looks at the primary key.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long a starting node waits for etcd and an election before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where this node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the primary key.
    Primary,
    /// It follows the primary at this replication address.
    Replica(String),
}

/// Settings of the failover loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// etcd endpoint.
    pub etcd: String,
    /// Key prefix, e.g. `/koshka/<cluster>/shard/<index>`.
    pub prefix: String,
    /// Lease time to live.
    pub ttl: Duration,
    /// This node's replication address (its id among the nodes of the shard).
    pub me: String,
    /// Every engine's client address.
    pub engines: Vec<(String, SocketAddr)>,
}

impl Settings {
    fn primary_key(&self) -> Vec<u8> {
        format!("{}/primary", self.prefix).into_bytes()
    }

    fn node_key(&self, node: &str) -> Vec<u8> {
        format!("{}/nodes/{node}", self.prefix).into_bytes()
    }

    fn primary_value(&self) -> Vec<u8> {
        let engines: serde_json::Map<String, serde_json::Value> = self
            .engines
            .iter()
            .map(|(n, a)| (n.clone(), json!(a.to_string())))
            .collect();
        json!({ "replication": self.me, "engines": engines })
            .to_string()
            .into_bytes()
    }
}

/// The replication address named by a primary key's value.
fn holder(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    v["replication"].as_str().map(str::to_string)
}

/// The coordination state of a running node.
pub(crate) struct Coordinator {
    client: Client,
    settings: Settings,
    lease: i64,
}

/// How far a node's logs go: the sum over its engines of the end of their last segment, from
/// the files (before the engines are open).
pub(crate) fn position_on_disk(data_dir: &Path, engines: &[String]) -> u64 {
    let mut total = 0u64;
    for name in engines {
        let dir = data_dir.join(name);
        if let Ok(segments) = koshka_binlog::fsutil::list(&dir, Some(name), "bin") {
            if let Some(last) = segments.last() {
                total += last.pos + last.len.saturating_sub(64);
            }
        }
    }
    total
}

impl Coordinator {
    /// Connects to etcd, takes a lease, and decides this node's role at start-up: follow
    /// the current primary, or win the election for a vacant key with `position`.
    pub(crate) fn start(settings: Settings, position: u64) -> Result<(Self, Role), String> {
        let client = Client::new(&settings.etcd);
        let deadline = Instant::now() + START_TIMEOUT;
        let ttl_s = i64::try_from(settings.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = loop {
            match client.grant(ttl_s) {
                Ok(lease) => break lease,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("failover: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("failover: {e}")),
            }
        };
        let coordinator = Self {
            client,
            settings,
            lease,
        };
        loop {
            match coordinator.step(position, true) {
                Ok(Some(role)) => return Ok((coordinator, role)),
                Ok(None) => {}
                Err(e) => tracing::warn!("failover: {e}"),
            }
            if Instant::now() >= deadline {
                return Err("failover: no primary could be agreed on in time".into());
            }
            let _ = coordinator.client.keep_alive(lease);
            std::thread::sleep(WATCH_INTERVAL);
        }
    }

    /// One look at the shard: `Some(role)` when it is decided.
    fn step(&self, position: u64, may_take: bool) -> Result<Option<Role>, String> {
        let s = &self.settings;
        let c = &self.client;
        let e = |e: koshka_etcd::Error| e.to_string();
        c.put(
            &s.node_key(&s.me),
            position.to_string().as_bytes(),
            self.lease,
        )
        .map_err(e)?;
        if let Some(kv) = c.get(&s.primary_key()).map_err(e)? {
            return Ok(match holder(&kv.value) {
                Some(h) if h == s.me && kv.lease == self.lease => Some(Role::Primary),
                // Our own key from a previous life: wait for its lease to end.
                Some(h) if h == s.me => None,
                Some(h) => Some(Role::Replica(h)),
                None => None,
            });
        }
        if !may_take {
            return Ok(None);
        }
        std::thread::sleep(SETTLE);
        let prefix = format!("{}/nodes/", s.prefix).into_bytes();
        let nodes = c.prefix(&prefix).map_err(e)?;
        let best = nodes
            .iter()
            .filter_map(|kv| {
                let name = String::from_utf8(kv.key[prefix.len()..].to_vec()).ok()?;
                let pos: u64 = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
                Some((pos, name))
            })
            // Most advanced first; among equals the smallest address.
            .min_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        match best {
            Some((_, name)) if name != s.me => return Ok(None),
            _ => {}
        }
        match c
            .create(&s.primary_key(), &s.primary_value(), self.lease)
            .map_err(e)?
        {
            None => Ok(Some(Role::Primary)),
            Some(kv) => Ok(holder(&kv.value).map(Role::Replica)),
        }
    }

    /// Runs the loop on its own thread until `stop`.
    pub(crate) fn spawn(
        self,
        role: Role,
        hosts: Vec<(String, Arc<HostPersistence>)>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("failover".into())
            .spawn(move || self.run(role, &hosts, &stop))
    }

    fn run(self, mut role: Role, hosts: &[(String, Arc<HostPersistence>)], stop: &AtomicBool) {
        let ttl = self.settings.ttl;
        let renew = ttl / RENEW_DIVISOR;
        let mut last_renewed = Instant::now();
        let mut fenced = false;
        // The lease itself ended: fenced for good (until a restart).
        let mut expired = false;
        while !stop.load(Ordering::Acquire) {
            let sent = Instant::now();
            match self.client.keep_alive(self.lease) {
                Ok(left) if left > 0 => {
                    last_renewed = sent;
                    if fenced && !expired && role == Role::Primary {
                        // etcd was out of reach for a while but the lease held: nobody else
                        // can have taken over. Writes resume once the key is still ours.
                        let position = hosts.iter().map(|(_, h)| h.host().applied_pos()).sum();
                        if let Ok(Some(Role::Primary)) = self.step(position, false) {
                            tracing::warn!("failover: lease renewed in time; writes resume");
                            fenced = false;
                            for (_, h) in hosts {
                                h.host().fence(false);
                            }
                        }
                    }
                }
                Ok(_) => {
                    expired = true;
                    if !fenced {
                        tracing::error!(
                            "failover: this node's etcd lease expired; writes fenced off \
                             until it is restarted (it then rejoins as a replica)"
                        );
                    }
                    fenced = true;
                }
                Err(e) => tracing::warn!("failover: renewing the lease: {e}"),
            }
            if role == Role::Primary
                && !fenced
                && last_renewed.elapsed() >= ttl.mul_f64(FENCE_FRACTION)
            {
                tracing::error!(
                    "failover: no lease renewal for {:?}; fencing writes before another node \
                     may take over",
                    last_renewed.elapsed()
                );
                fenced = true;
            }
            if fenced {
                for (_, h) in hosts {
                    h.host().fence(true);
                }
            } else {
                role = self.follow(role, hosts);
            }
            let wait = if role == Role::Primary {
                renew
            } else {
                WATCH_INTERVAL.min(renew)
            };
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if role == Role::Primary && !fenced {
            // A clean stop hands over at once instead of after the lease time.
            let _ = self.client.revoke(self.lease);
        }
    }

    /// A replica's turn: follow the holder of the key, or run for a vacant one.
    fn follow(&self, role: Role, hosts: &[(String, Arc<HostPersistence>)]) -> Role {
        let position: u64 = hosts.iter().map(|(_, h)| h.host().applied_pos()).sum();
        let may_take = matches!(role, Role::Replica(_));
        match self.step(position, may_take) {
            Ok(Some(Role::Primary)) if role != Role::Primary => {
                for (name, h) in hosts {
                    match h.host().promote() {
                        Ok(pos) => tracing::warn!("failover: {name} promoted at {pos}"),
                        Err(e) => tracing::error!("failover: promoting {name}: {e}"),
                    }
                }
                Role::Primary
            }
            Ok(Some(Role::Replica(new))) => {
                if role == Role::Primary {
                    tracing::error!(
                        "failover: {new} holds the primary key; this node keeps its writes \
                         fenced until restarted"
                    );
                    for (_, h) in hosts {
                        h.host().fence(true);
                    }
                    return role;
                }
                for (_, h) in hosts {
                    h.host().retarget(&new);
                }
                Role::Replica(new)
            }
            Ok(_) => role,
            Err(e) => {
                tracing::warn!("failover: {e}");
                role
            }
        }
    }
}
