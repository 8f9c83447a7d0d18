//! The engine registry: the one place that maps an engine name to its constructor and its key
//! length limit. Adding an engine = one crate + one arm here + its name in [`KNOWN`].

use std::sync::Arc;

use koshka_engine::ShardSpec;
use koshka_kv::{Kv, KvConfig, Mode};
use koshka_messages::{Flavour, MessagesEngine};
use koshka_server::config::{Config, KvMode};
use koshka_server::Hosted;

/// Engines this build knows, in default port order.
pub const KNOWN: &[&str] = &["kv", "messages", "wall", "friends"];

/// Builds the engine called `name` with the longest key its port accepts.
pub fn build(name: &str, config: &Config) -> anyhow::Result<(Hosted, usize)> {
    let shard = ShardSpec {
        index: config.engines.shard_index,
        count: config.engines.shard_count,
    };
    let compiled = koshka_limits::COMPILED_KEY_LEN_MAX;
    Ok(match name {
        "kv" => {
            let kv_config = KvConfig {
                mode: match config.storage.kv_mode {
                    KvMode::Persistent => Mode::Persistent,
                    KvMode::Cache => Mode::Cache,
                },
                memory_limit: usize::try_from(config.storage.memory_limit.0)?,
                value_size_max: usize::try_from(config.server.value_size_max.0)?,
            };
            let kv = Arc::new(Kv::new(kv_config));
            // Frees expired items in the background, as memcached's LRU crawler does.
            Kv::spawn_sweeper(&kv)?;
            (Hosted::Kv(kv), koshka_limits::KEY_LEN_MAX)
        }
        "messages" => (
            Hosted::Compiled(Arc::new(MessagesEngine::new(Flavour::Messages, shard))),
            compiled,
        ),
        "wall" => (
            Hosted::Compiled(Arc::new(MessagesEngine::new(Flavour::Wall, shard))),
            compiled,
        ),
        "friends" => (
            Hosted::Compiled(Arc::new(koshka_friends::FriendsEngine::new(shard))),
            compiled,
        ),
        other => anyhow::bail!("unknown engine {other:?} (known: {})", KNOWN.join(", ")),
    })
}
