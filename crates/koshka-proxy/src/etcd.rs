//! Following the shard map in etcd (`[proxy] etcd`; `docs/replication.md`): the nodes of a
//! shard publish their primary under `/koshka/<cluster>/shard/<i>/primary` with every
//! engine's client address. This thread polls those keys and, when a shard's primary moved
//! (a failover), reloads the map with the new primary first and the old one among the
//! replicas — the same reload as SIGHUP, so client connections stay open.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, ShardConfig};
use crate::Control;

/// How often the proxy reads the primary keys.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Client addresses of one shard's primary, by engine name, as etcd says.
fn primary_engines(client: &koshka_etcd::Client, key: &str) -> Option<BTreeMap<String, String>> {
    let kv = client.get(key.as_bytes()).ok()??;
    let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
    Some(
        v["engines"]
            .as_object()?
            .iter()
            .filter_map(|(k, a)| Some((k.clone(), a.as_str()?.to_string())))
            .collect(),
    )
}

/// `base` with every shard whose primary etcd names elsewhere rewritten to it.
fn effective(base: &Config, primaries: &BTreeMap<usize, BTreeMap<String, String>>) -> Config {
    let mut config = base.clone();
    for cluster in &mut config.clusters {
        let engine = cluster.engine.name();
        for (index, shard) in cluster.shards.iter_mut().enumerate() {
            let Some(addr) = primaries.get(&index).and_then(|e| e.get(engine)) else {
                continue;
            };
            if shard.primary() == addr {
                continue;
            }
            let mut replicas: Vec<String> = std::iter::once(shard.primary().to_string())
                .chain(shard.replicas().iter().cloned())
                .filter(|r| r != addr)
                .collect();
            replicas.dedup();
            let name = match shard {
                ShardConfig::Full { name, .. } => name.clone(),
                ShardConfig::Addr(_) => None,
            };
            // Keep the ketama name of the original primary, so placement does not move.
            let name = name.or_else(|| Some(base_ring_name(shard)));
            *shard = ShardConfig::Full {
                primary: addr.clone(),
                replicas,
                name,
            };
        }
    }
    config
}

fn base_ring_name(shard: &ShardConfig) -> String {
    shard.ring_name()
}

/// Starts the follower when `config.proxy.etcd` is set; it stops when the proxy stops.
#[must_use]
pub fn spawn(config: &Config, control: mpsc::UnboundedSender<Control>) -> Option<JoinHandle<()>> {
    if config.proxy.etcd.is_empty() {
        return None;
    }
    let base = config.clone();
    std::thread::Builder::new()
        .name("proxy-etcd".into())
        .spawn(move || follow(&base, &control))
        .map_err(|e| tracing::error!("cannot start the etcd follower: {e}"))
        .ok()
}

fn follow(base: &Config, control: &mpsc::UnboundedSender<Control>) {
    let client = koshka_etcd::Client::new(&base.proxy.etcd);
    let shards = base
        .clusters
        .iter()
        .map(|c| c.shards.len())
        .max()
        .unwrap_or(0);
    let mut applied = base.clone();
    while !control.is_closed() {
        let mut primaries = BTreeMap::new();
        for index in 0..shards {
            let key = format!("/koshka/{}/shard/{index}/primary", base.proxy.etcd_cluster);
            if let Some(engines) = primary_engines(&client, &key) {
                primaries.insert(index, engines);
            }
        }
        let next = effective(base, &primaries);
        if next != applied {
            let (tx, rx) = std::sync::mpsc::channel();
            if control
                .send(Control::Reload(Box::new(next.clone()), tx))
                .is_err()
            {
                return;
            }
            match rx.recv() {
                Ok(Ok(())) => {
                    tracing::warn!("etcd: a shard's primary moved; the map follows it");
                    applied = next;
                }
                Ok(Err(e)) => tracing::error!("etcd: reload refused: {e}"),
                Err(_) => return,
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_primary_is_rewritten_and_the_old_one_becomes_a_replica() {
        let base = Config::from_toml(
            "[[cluster]]\nname = \"kv\"\nengine = \"kv\"\nlisten = \"127.0.0.1:0\"\n\
             shards = [\"127.0.0.1:1000\", { primary = \"127.0.0.1:2000\", replicas = [\"127.0.0.1:2001\"] }]\n",
        )
        .unwrap();
        let mut primaries = BTreeMap::new();
        primaries.insert(
            1,
            BTreeMap::from([("kv".to_string(), "127.0.0.1:2001".to_string())]),
        );
        let next = effective(&base, &primaries);
        assert_eq!(next.clusters[0].shards[0], base.clusters[0].shards[0]);
        assert_eq!(next.clusters[0].shards[1].primary(), "127.0.0.1:2001");
        assert_eq!(next.clusters[0].shards[1].replicas(), ["127.0.0.1:2000"]);
        assert_eq!(next.clusters[0].shards[1].ring_name(), "127.0.0.1:2000");
        // Unchanged primaries leave the map as it is.
        let same = BTreeMap::from([(
            0usize,
            BTreeMap::from([("kv".to_string(), "127.0.0.1:1000".to_string())]),
        )]);
        assert_eq!(effective(&base, &same), base);
    }
}
