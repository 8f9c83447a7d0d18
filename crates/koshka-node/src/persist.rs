//! Adapts the binlog [`Host`] to the server's [`Persistence`] seam.

use std::future::Future;
use std::pin::Pin;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use koshka_binlog::Host;
use koshka_engine::{Clock, Journal, Stat};
use koshka_server::Persistence;

/// A persistence host as the server sees it, with the semi-synchronous acknowledgement rule
/// of `[replication]`.
pub struct HostPersistence {
    pub(crate) host: Host,
    /// Replicas that must have written a position before it is acknowledged (0: async).
    semisync_replicas: usize,
    semisync_timeout: Duration,
    semisync_timeouts: AtomicU64,
}

impl HostPersistence {
    /// The binlog host.
    #[must_use]
    pub fn host(&self) -> &Host {
        &self.host
    }

    fn semisync(&self) -> bool {
        self.semisync_replicas > 0 && !self.host.is_replica()
    }
}

impl Persistence for HostPersistence {
    fn journal(&self) -> &dyn Journal {
        self.host.journal()
    }

    fn acked_pos(&self) -> u64 {
        let local = self
            .host
            .binlog()
            .map_or(u64::MAX, koshka_binlog::Binlog::acked);
        if self.semisync() {
            local.min(self.host.acks().confirmed(self.semisync_replicas))
        } else {
            local
        }
    }

    fn wait_acked(
        &self,
        pos: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.host.wait_acked(pos).await.map_err(|e| e.to_string())?;
            if self.semisync()
                && !self
                    .host
                    .acks()
                    .wait(self.semisync_replicas, pos, self.semisync_timeout)
                    .await
            {
                self.semisync_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(format!(
                    "semi-synchronous replication: fewer than {} replicas wrote position {pos} \
                     within {} ms",
                    self.semisync_replicas,
                    self.semisync_timeout.as_millis()
                ));
            }
            Ok(())
        })
    }

    fn promote(&self) -> Result<String, String> {
        self.host
            .promote()
            .map(|pos| format!("primary from position {pos}"))
            .map_err(|e| e.to_string())
    }

    fn request_snapshot(&self) -> String {
        if self.host.binlog().is_none() {
            return "durability none: nothing to snapshot".into();
        }
        self.host.request_snapshot();
        "started".into()
    }

    fn stats(&self) -> Vec<Stat> {
        let mut stats = self.host.stats();
        stats.push((
            "repl_semisync_replicas".into(),
            self.semisync_replicas.to_string(),
        ));
        stats.push((
            "repl_semisync_timeouts".into(),
            self.semisync_timeouts.load(Ordering::Relaxed).to_string(),
        ));
        stats
    }

    fn shutdown(&self) -> Result<(), String> {
        self.host.shutdown().map_err(|e| e.to_string())
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
) -> crate::Result<Arc<HostPersistence>> {
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
    if !config.replication.primary.is_empty() {
        persist.replica_of = Some(config.replication.primary.clone());
    }
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
    Ok(Arc::new(HostPersistence {
        host,
        semisync_replicas: config.replication.semisync_replicas,
        semisync_timeout: Duration::from_millis(config.replication.semisync_timeout_ms),
        semisync_timeouts: AtomicU64::new(0),
    }))
}
