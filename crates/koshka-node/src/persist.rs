//! Adapts the binlog [`Host`] to the server's [`Persistence`] seam.

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use koshka_binlog::Host;
use koshka_engine::{Clock, Journal, Stat};
use koshka_server::Persistence;

/// A persistence host as the server sees it.
pub struct HostPersistence(pub Host);

impl Persistence for HostPersistence {
    fn journal(&self) -> &dyn Journal {
        self.0.journal()
    }

    fn acked_pos(&self) -> u64 {
        self.0
            .binlog()
            .map_or(u64::MAX, koshka_binlog::Binlog::acked)
    }

    fn wait_acked(
        &self,
        pos: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.wait_acked(pos).await.map_err(|e| e.to_string()) })
    }

    fn request_snapshot(&self) -> String {
        if self.0.binlog().is_none() {
            return "durability none: nothing to snapshot".into();
        }
        self.0.request_snapshot();
        "started".into()
    }

    fn stats(&self) -> Vec<Stat> {
        self.0.stats()
    }

    fn shutdown(&self) -> Result<(), String> {
        self.0.shutdown().map_err(|e| e.to_string())
    }
}

/// Opens (recovers) the binlog host of one engine: newest snapshot + replay of the log tail.
/// `clock`, when given, replaces the system clock of the log.
pub(crate) fn open(
    name: &str,
    engine: &Arc<dyn koshka_engine::Engine>,
    config: &koshka_server::Config,
    durability: koshka_binlog::Durability,
    clock: Option<&Arc<dyn Clock>>,
) -> crate::Result<Arc<dyn Persistence>> {
    let dir = config.storage.data_dir.join(name);
    let mut persist = koshka_binlog::PersistConfig::new(&dir, name, &config.limits());
    persist.shard = koshka_engine::ShardSpec {
        index: config.engines.shard_index,
        count: config.engines.shard_count,
    };
    persist.durability = durability;
    persist.snapshot_on_shutdown = config.storage.snapshot_on_shutdown;
    persist.snapshot_nice = config.storage.snapshot_nice;
    persist.snapshot_rate = config.storage.snapshot_rate.0;
    persist.replay_threads = config.storage.replay_threads;
    persist.repair = config.storage.repair;
    if let Some(clock) = clock {
        persist.clock = clock.clone();
    }
    let started = std::time::Instant::now();
    let host = Host::open(engine.clone(), persist).map_err(|source| crate::Error::Persistence {
        engine: name.into(),
        source,
    })?;
    tracing::info!(
        "{name}: ready in {:.2}s ({durability:?})",
        started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(HostPersistence(host)))
}
