//! How an engine registers with a node: one [`EngineSpec`] value naming it, its stable
//! default port, its key length limit and its constructor. The node's registry is a list of
//! these; adding an engine adds one line there (see docs/engine-guide.md).

use std::sync::Arc;

use crate::{Engine, Result, ShardSpec};

/// What a node tells an engine it builds.
#[derive(Debug, Clone)]
pub struct EngineSetup {
    /// The shard of this engine held by the node.
    pub shard: ShardSpec,
    /// The node's memory limit for engine data, in bytes.
    pub memory_limit: u64,
    /// Largest value a store command may carry.
    pub value_size_max: usize,
    /// The node runs `kv` as an evicting cache (`--cache`).
    pub cache: bool,
    /// The engine's own configuration section (`[engine.<name>]`), empty when absent.
    pub settings: toml::Table,
}

/// An engine built by its [`EngineSpec`].
pub struct Built {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// Whether it writes a binlog; false for a pure cache (no log, nothing survives a restart).
    pub logged: bool,
}

/// One entry of a node's engine registry.
#[derive(Debug, Clone, Copy)]
pub struct EngineSpec {
    /// The engine's name: its `--engines` word, data sub-directory and binlog header name.
    pub name: &'static str,
    /// The port it listens on unless configured otherwise. Stable: enabling or disabling
    /// another engine never moves it.
    pub default_port: u16,
    /// Longest key its port accepts.
    pub key_len_max: usize,
    /// One line for `koshka serve --help` and the docs.
    pub summary: &'static str,
    /// Builds an empty instance.
    pub build: fn(&EngineSetup) -> Result<Built>,
}
