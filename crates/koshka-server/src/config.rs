//! Node configuration: TOML, one section per subsystem, defaults from named constants.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:11211"   # the kv port; other engines take the following ports
//! threads = 2                  # 0 = one per core
//! max_connections = 4096
//! output_buffer = "16MiB"      # replies queued per connection before it is dropped
//! output_budget = "256MiB"     # … by all clients that do not read, before the biggest goes
//! value_size_max = "1MiB"
//! write_stall_timeout_ms = 30000 # drop a client whose reply buffer stays full this long
//!
//! [storage]
//! data_dir = "./koshka-data"
//! durability = "everysec"      # always | everysec | none
//! memory_limit = "1GiB"
//! kv_mode = "persistent"       # persistent | cache (cache implies durability none for kv)
//! segment_size = "256MiB"
//! snapshot_log_bytes = "512MiB"
//! snapshot_on_shutdown = true
//! snapshot_nice = 10           # background snapshots run at this lower CPU priority
//! snapshot_rate = "0"          # bytes/s a background snapshot is paced to; 0 = unpaced
//! replay_threads = 0           # start-up replay apply threads; 0 = one per core
//!
//! [engines]
//! enabled = ["kv", "messages", "wall", "friends"]
//! shard_index = 0
//! shard_count = 1
//!
//! [engine.messages]            # one optional section per engine
//! port = 11212                 # its own port (default: the engine's stable default)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default kv listen address (memcached's port, loopback only).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:11211";

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./koshka-data";

/// Engines a node runs when the configuration does not say, in port order after `--listen`.
pub const ENGINES_DEFAULT: &[&str] = &["kv", "messages", "wall", "friends"];

/// A configuration error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("invalid configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A byte size written as a number or a human string (`"64MiB"`, `"1GiB"`, `"512KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(repr: SizeRepr) -> Result<Self, String> {
        match repr {
            SizeRepr::Number(n) => Ok(Size(n)),
            SizeRepr::Text(text) => text.parse(),
        }
    }
}

impl From<Size> for String {
    fn from(size: Size) -> String {
        size.to_string()
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {text:?}"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(format!("invalid size unit in {text:?}")),
        };
        n.checked_mul(scale)
            .map(Size)
            .ok_or_else(|| format!("size {text:?} overflows"))
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After fsync (group commit): survives power loss.
    Always,
    /// After write(2), fsync at least every second: survives a process crash.
    Everysec,
    /// No binlog: a cache.
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::Everysec),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "durability must be always, everysec or none, not {s:?}"
            )),
        }
    }
}

/// `kv` behaviour at its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvMode {
    /// Refuse writes (`SERVER_ERROR out of memory`).
    Persistent,
    /// Evict least recently used items; no binlog.
    Cache,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// kv listen address; other engines listen on the following ports.
    pub listen: String,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Reply bytes queued per connection before a non-reading client is dropped.
    pub output_buffer: Size,
    /// Reply bytes held by all non-reading clients together before the biggest is dropped.
    pub output_budget: Size,
    /// Largest value.
    pub value_size_max: Size,
    /// How long a connection may stall with a full reply buffer before it is dropped, in
    /// milliseconds.
    pub write_stall_timeout_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: LISTEN_DEFAULT.into(),
            threads: 0,
            max_connections: koshka_limits::CONNECTIONS_DEFAULT,
            output_buffer: Size(koshka_limits::OUTPUT_BUFFER_DEFAULT as u64),
            output_budget: Size(crate::OUTPUT_BUDGET_DEFAULT),
            value_size_max: Size(koshka_limits::VALUE_SIZE_DEFAULT as u64),
            write_stall_timeout_ms: crate::WRITE_STALL_TIMEOUT_MS,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Data directory; one sub-directory per engine.
    pub data_dir: PathBuf,
    /// Acknowledgement rule.
    pub durability: Durability,
    /// kv memory limit.
    pub memory_limit: Size,
    /// kv full behaviour.
    pub kv_mode: KvMode,
    /// Binlog segment size before rotation.
    pub segment_size: Size,
    /// Log bytes since the last snapshot that trigger the next one.
    pub snapshot_log_bytes: Size,
    /// Write a snapshot on clean shutdown.
    pub snapshot_on_shutdown: bool,
    /// How much the background snapshot thread lowers its CPU priority (a nice value,
    /// 0..=19).
    pub snapshot_nice: i32,
    /// Bytes per second a background snapshot is paced to; 0 = as fast as it goes.
    pub snapshot_rate: Size,
    /// Apply threads of the start-up replay, for engines whose records each touch one
    /// partition (kv); 0 = one per core, 1 = serial.
    pub replay_threads: usize,
    /// Truncate the log at the first corrupt record instead of refusing to start.
    pub repair: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            durability: Durability::Everysec,
            memory_limit: Size(koshka_limits::MEMORY_LIMIT_DEFAULT),
            kv_mode: KvMode::Persistent,
            segment_size: Size(koshka_limits::BINLOG_SEGMENT_SIZE_DEFAULT),
            snapshot_log_bytes: Size(koshka_limits::SNAPSHOT_LOG_BYTES_DEFAULT),
            snapshot_on_shutdown: true,
            snapshot_nice: koshka_limits::SNAPSHOT_NICE_DEFAULT,
            snapshot_rate: Size(koshka_limits::SNAPSHOT_RATE_DEFAULT),
            replay_threads: 0,
            repair: false,
        }
    }
}

/// `[engines]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnginesSection {
    /// Engines to host, in port order.
    pub enabled: Vec<String>,
    /// This node's shard.
    pub shard_index: u32,
    /// Shards per engine in the cluster.
    pub shard_count: u32,
}

impl Default for EnginesSection {
    fn default() -> Self {
        Self {
            enabled: ENGINES_DEFAULT.iter().map(|s| (*s).to_string()).collect(),
            shard_index: 0,
            shard_count: 1,
        }
    }
}

/// `[replication]` (`docs/replication.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    /// Address replicas connect to for log shipping (`""`: none; port 0: ephemeral).
    pub listen: String,
    /// Replication address of this node's primary (`""`: this node is a primary). A replica
    /// serves reads and refuses writes until promoted (`stats promote`).
    pub primary: String,
    /// Semi-synchronous acknowledgement: a write is acknowledged once it is durable locally
    /// and this many replicas have written it (0: asynchronous).
    pub semisync_replicas: usize,
    /// How long a semi-synchronous write waits for its replicas, in milliseconds; past it the
    /// write is not acknowledged (the connection is closed, as for a failed log) and
    /// `repl_semisync_timeouts` counts it.
    pub semisync_timeout_ms: u64,
    /// etcd endpoint (`http://host:port`) that coordinates failover (`""`: none; promote
    /// with `koshka replication promote`). Needs `listen`.
    pub etcd: String,
    /// Name of the cluster in etcd's keys (`/koshka/<cluster>/shard/<index>/…`).
    pub cluster: String,
    /// Lease time to live in milliseconds: how long a dead primary keeps its shard before a
    /// replica takes over (whole seconds at etcd, at least 1 s).
    pub lease_ttl_ms: u64,
    /// Replication address the other nodes connect to (`""`: the bound `listen` address).
    pub advertise: String,
}

/// Default of `replication.lease_ttl_ms`.
pub const LEASE_TTL_MS_DEFAULT: u64 = 3000;

/// Default of `replication.semisync_timeout_ms`.
pub const SEMISYNC_TIMEOUT_MS_DEFAULT: u64 = 1000;

impl Default for ReplicationSection {
    fn default() -> Self {
        Self {
            listen: String::new(),
            primary: String::new(),
            semisync_replicas: 0,
            semisync_timeout_ms: SEMISYNC_TIMEOUT_MS_DEFAULT,
            etcd: String::new(),
            cluster: "koshka".into(),
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            advertise: String::new(),
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerSection,
    /// `[storage]`
    pub storage: StorageSection,
    /// `[engines]`
    pub engines: EnginesSection,
    /// `[replication]`
    pub replication: ReplicationSection,
    /// `[engine.<name>]`: each engine's own section. `port` is read by the node; everything
    /// else is handed to the engine.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub engine: std::collections::BTreeMap<String, toml::Table>,
}

/// The key of an engine section that sets its port.
pub const ENGINE_PORT_KEY: &str = "port";

impl Config {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`ConfigError`] for unreadable or invalid files.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(toml::from_str(&text)?)
    }

    /// The effective configuration as TOML (`--print-config`).
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Worker threads after resolving 0 to the core count.
    #[must_use]
    pub fn threads(&self) -> usize {
        match self.server.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
        .min(koshka_limits::THREADS_MAX)
    }

    /// Checks ranges and limits.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the bad setting.
    pub fn validate(&self) -> Result<SocketAddr, ConfigError> {
        let listen: SocketAddr = self.server.listen.parse().map_err(|e| {
            ConfigError::Invalid(format!("server.listen {:?}: {e}", self.server.listen))
        })?;
        let limits = self.limits();
        limits
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.engines.shard_count == 0 || self.engines.shard_index >= self.engines.shard_count {
            return Err(ConfigError::Invalid(format!(
                "engines.shard_index {} must be below engines.shard_count {}",
                self.engines.shard_index, self.engines.shard_count
            )));
        }
        if self.server.output_budget.0 < self.server.output_buffer.0 {
            return Err(ConfigError::Invalid(format!(
                "server.output_budget ({}) must be at least server.output_buffer ({})",
                self.server.output_budget, self.server.output_buffer
            )));
        }
        if self.server.write_stall_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "server.write_stall_timeout_ms must be positive".into(),
            ));
        }
        if !self.replication.listen.is_empty() {
            self.replication.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::Invalid(format!(
                    "replication.listen {:?}: {e}",
                    self.replication.listen
                ))
            })?;
        }
        if !self.replication.etcd.is_empty() && self.replication.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "replication.etcd needs replication.listen (the nodes of a shard replicate \
                 from whichever is primary)"
                    .into(),
            ));
        }
        if !self.replication.etcd.is_empty() && self.replication.lease_ttl_ms < 1000 {
            return Err(ConfigError::Invalid(format!(
                "replication.lease_ttl_ms {} is below etcd's 1 s granularity",
                self.replication.lease_ttl_ms
            )));
        }
        if self.replication.semisync_replicas > 8 {
            return Err(ConfigError::Invalid(format!(
                "replication.semisync_replicas {} is over 8",
                self.replication.semisync_replicas
            )));
        }
        if self.replication.semisync_replicas > 0 && self.replication.semisync_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "replication.semisync_timeout_ms must be positive".into(),
            ));
        }
        if self.engines.enabled.is_empty() {
            return Err(ConfigError::Invalid("engines.enabled is empty".into()));
        }
        if !(0..=koshka_limits::SNAPSHOT_NICE_MAX).contains(&self.storage.snapshot_nice) {
            return Err(ConfigError::Invalid(format!(
                "storage.snapshot_nice {} must be in 0..={} (it only lowers the priority)",
                self.storage.snapshot_nice,
                koshka_limits::SNAPSHOT_NICE_MAX
            )));
        }
        Ok(listen)
    }

    /// The port configured for `engine` in its `[engine.<name>]` section, if any.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `port` is not an integer in `0..=65535`.
    pub fn engine_port(&self, engine: &str) -> Result<Option<u16>, ConfigError> {
        let Some(value) = self.engine.get(engine).and_then(|t| t.get(ENGINE_PORT_KEY)) else {
            return Ok(None);
        };
        value
            .as_integer()
            .and_then(|p| u16::try_from(p).ok())
            .map(Some)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "engine.{engine}.port must be a port number (0..=65535), not {value}"
                ))
            })
    }

    /// The settings of `engine` for the engine itself (its section without `port`).
    #[must_use]
    pub fn engine_settings(&self, engine: &str) -> toml::Table {
        let mut table = self.engine.get(engine).cloned().unwrap_or_default();
        table.remove(ENGINE_PORT_KEY);
        table
    }

    /// The tunable limits this configuration asks for.
    #[must_use]
    pub fn limits(&self) -> koshka_limits::Limits {
        let mut limits = koshka_limits::Limits::production();
        limits.value_size_max = usize::try_from(self.server.value_size_max.0).unwrap_or(usize::MAX);
        limits.connections_max = self.server.max_connections;
        limits.output_buffer_max =
            usize::try_from(self.server.output_buffer.0).unwrap_or(usize::MAX);
        limits.binlog_segment_size = self.storage.segment_size.0;
        limits.snapshot_log_bytes = self.storage.snapshot_log_bytes.0;
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("64MiB".parse::<Size>(), Ok(Size(64 << 20)));
        assert_eq!("1g".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("100".parse::<Size>(), Ok(Size(100)));
        assert!("x".parse::<Size>().is_err());
        assert!("5 parsecs".parse::<Size>().is_err());
        assert_eq!(Size(3 << 20).to_string(), "3MiB");
    }

    #[test]
    fn toml_roundtrip_and_defaults() {
        let config: Config = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:0\"\nvalue_size_max = \"2MiB\"\n[storage]\ndurability = \"always\"\n",
        )
        .unwrap();
        assert_eq!(config.server.value_size_max, Size(2 << 20));
        assert_eq!(config.storage.durability, Durability::Always);
        assert_eq!(config.engines, EnginesSection::default());
        let again: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(again, config);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(toml::from_str::<Config>("[server]\nbogus = 1\n").is_err());
        let mut config = Config::default();
        config.server.value_size_max = Size(1 << 40);
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.engines.shard_index = 3;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.storage.snapshot_nice = -1;
        assert!(config.validate().is_err());
        config.storage.snapshot_nice = koshka_limits::SNAPSHOT_NICE_MAX + 1;
        assert!(config.validate().is_err());
        config.storage.snapshot_nice = koshka_limits::SNAPSHOT_NICE_MAX;
        assert!(config.validate().is_ok());
    }
}
