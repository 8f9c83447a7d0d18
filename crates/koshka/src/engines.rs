//! The engine registry: the one place that maps an engine name to its constructor, its key
//! length limit and its default port offset. Adding an engine = one crate + one arm here.

use std::sync::Arc;

use koshka_engine::ShardSpec;
use koshka_kv::{Kv, KvConfig, Mode};
use koshka_server::config::{Config, KvMode};
use koshka_server::Hosted;

/// Builds the engine called `name`, or says why not.
pub fn build(name: &str, config: &Config) -> anyhow::Result<(Hosted, usize)> {
    let shard = ShardSpec {
        index: config.engines.shard_index,
        count: config.engines.shard_count,
    };
    let _ = shard;
    match name {
        "kv" => {
            let kv_config = KvConfig {
                mode: match config.storage.kv_mode {
                    KvMode::Persistent => Mode::Persistent,
                    KvMode::Cache => Mode::Cache,
                },
                memory_limit: usize::try_from(config.storage.memory_limit.0)?,
                value_size_max: usize::try_from(config.server.value_size_max.0)?,
            };
            Ok((
                Hosted::Kv(Arc::new(Kv::new(kv_config))),
                koshka_limits::KEY_LEN_MAX,
            ))
        }
        other => anyhow::bail!("unknown or not yet available engine {other:?}"),
    }
}

/// Engines this build knows.
pub const KNOWN: &[&str] = &["kv"];
