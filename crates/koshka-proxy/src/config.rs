//! The cluster map: TOML, one section per subsystem, defaults from named constants.
//!
//! ```toml
//! [proxy]
//! get_timeout_ms = 500          # multi-get deadline: missing shards contribute nothing
//!
//! [cache]                       # optional read-through memcached pool
//! servers = ["127.0.0.1:11311"]
//! ttl_seconds = 60
//!
//! [twin]
//! queue = "/var/lib/koshka-proxy/twin.queue"   # durable queue of second halves
//!
//! [[cluster]]
//! name = "friends"
//! engine = "friends"            # kv | messages | wall | friends | search | news
//! listen = "127.0.0.1:11214"
//! cache = ["friends", "friendcnt"]
//! shards = ["127.0.0.1:12014", { primary = "127.0.0.1:12114", replicas = ["127.0.0.1:12214"] }]
//! ```
//!
//! The order of the `shards` list defines the shard numbers `0..N-1`: an owner id `u` lives on
//! shard `|u| / step mod N`, the rule every node checks (`step` 1).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default multi-get (and single get) deadline. VK's mc-proxy used 300 ms; a little more here
/// because the test machines are small and shared.
pub const GET_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Default deadline of a write; a write that misses it answers `SERVER_ERROR`.
pub const SET_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// Default deadline of a TCP connect to a backend.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// An idle backend connection is pinged (`version`) this often.
pub const PING_INTERVAL_MS_DEFAULT: u64 = 2000;
/// First reconnect delay after a failure; doubles up to [`RECONNECT_MAX_MS_DEFAULT`], with
/// ±50 % jitter so that many proxies do not reconnect in step.
pub const RECONNECT_MIN_MS_DEFAULT: u64 = 100;
/// Longest reconnect delay.
pub const RECONNECT_MAX_MS_DEFAULT: u64 = 2000;
/// A connection whose oldest request waited this long is closed and reopened (VK: 5 s).
pub const STUCK_MS_DEFAULT: u64 = 5000;
/// Persistent connections per backend, shared by every client connection.
pub const CONNECTIONS_PER_BACKEND_DEFAULT: usize = 2;
/// Most backend connections per backend a configuration may ask for.
pub const CONNECTIONS_PER_BACKEND_MAX: usize = 64;
/// Most client connections the proxy holds; more are answered
/// `SERVER_ERROR too many connections` and closed.
pub const CLIENT_CONNECTIONS_DEFAULT: usize = 4096;
/// Most shards one cluster may have (the fan-out of one scatter/gather).
pub const SHARDS_MAX: usize = 4096;
/// Default for how long a client may leave its replies unread (the proxy's write to it makes
/// no progress) before its connection is closed, in milliseconds: a node's own
/// `write_stall_timeout_ms`. Until then the connection holds at most one batch of replies.
pub const WRITE_STALL_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default time to live of a cached value.
pub const CACHE_TTL_SECONDS_DEFAULT: u32 = 60;
/// Default deadline of a cache-pool request; a late cache answer counts as a miss.
pub const CACHE_TIMEOUT_MS_DEFAULT: u64 = 100;
/// First retry delay of a queued twin half; doubles up to [`TWIN_RETRY_MAX_MS_DEFAULT`].
pub const TWIN_RETRY_MIN_MS_DEFAULT: u64 = 200;
/// Longest retry delay of a queued twin half.
pub const TWIN_RETRY_MAX_MS_DEFAULT: u64 = 5000;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or has unknown fields.
    #[error("{0}")]
    Toml(String),
    /// A setting is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The whole proxy configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Timeouts, connections, health.
    pub proxy: ProxySection,
    /// The read-through memcached pool.
    pub cache: CacheSection,
    /// Cross-shard (twin) writes.
    pub twin: TwinSection,
    /// The feed key's in-proxy cache.
    pub feed: FeedSection,
    /// The clusters, each on its own listen port.
    #[serde(rename = "cluster")]
    pub clusters: Vec<ClusterConfig>,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Persistent pipelined connections per backend.
    pub connections_per_backend: usize,
    /// Deadline of a retrieval (every shard of a multi-get), in milliseconds.
    pub get_timeout_ms: u64,
    /// Deadline of a write, in milliseconds.
    pub set_timeout_ms: u64,
    /// Deadline of a backend connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Idle connections are pinged this often, in milliseconds.
    pub ping_interval_ms: u64,
    /// First reconnect delay, in milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub reconnect_max_ms: u64,
    /// A connection whose oldest request waited this long is reopened, in milliseconds.
    pub stuck_ms: u64,
    /// Most client connections.
    pub max_connections: usize,
    /// Largest value a client may store, in bytes (the nodes' own limit applies too).
    pub value_size_max: usize,
    /// A client whose replies stay unread this long is disconnected, in milliseconds.
    pub write_stall_timeout_ms: u64,
    /// etcd endpoint whose shard map the proxy follows after failovers (`""`: none).
    pub etcd: String,
    /// Cluster name in etcd's keys (the nodes' `replication.cluster`).
    pub etcd_cluster: String,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            threads: 0,
            connections_per_backend: CONNECTIONS_PER_BACKEND_DEFAULT,
            get_timeout_ms: GET_TIMEOUT_MS_DEFAULT,
            set_timeout_ms: SET_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            ping_interval_ms: PING_INTERVAL_MS_DEFAULT,
            reconnect_min_ms: RECONNECT_MIN_MS_DEFAULT,
            reconnect_max_ms: RECONNECT_MAX_MS_DEFAULT,
            stuck_ms: STUCK_MS_DEFAULT,
            max_connections: CLIENT_CONNECTIONS_DEFAULT,
            value_size_max: koshka_limits::VALUE_SIZE_DEFAULT,
            write_stall_timeout_ms: WRITE_STALL_TIMEOUT_MS_DEFAULT,
            etcd: String::new(),
            etcd_cluster: "koshka".into(),
        }
    }
}

/// `[cache]`: the memcached pool reads go through for the key families a cluster names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// memcached servers (`host:port`), placed on a ketama ring; empty = no cache tier.
    pub servers: Vec<String>,
    /// Time to live of a cached value, in seconds.
    pub ttl_seconds: u32,
    /// Deadline of a cache request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            ttl_seconds: CACHE_TTL_SECONDS_DEFAULT,
            timeout_ms: CACHE_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Default time to live of the feed cache's entries (friend lists, privacy answers, author
/// heads), in milliseconds: the staleness bound for writes that bypass the proxy.
pub const FEED_CACHE_TTL_MS_DEFAULT: u64 = 1000;
/// Longest feed cache TTL a configuration may ask for.
pub const FEED_CACHE_TTL_MS_MAX: u64 = 60_000;
/// Default size of the feed cache's friend lists, in ids (plus one per list).
pub const FEED_CACHE_LIST_IDS_DEFAULT: usize = 1_000_000;
/// Default size of the feed cache's privacy answers, in answers.
pub const FEED_CACHE_PRIVACY_DEFAULT: usize = 200_000;
/// Default size of the feed cache's author heads, in events (plus one per head).
pub const FEED_CACHE_EVENTS_DEFAULT: usize = 500_000;
/// Largest size a configuration may give one feed cache table.
pub const FEED_CACHE_SIZE_MAX: usize = 100_000_000;

/// `[feed]`: the feed key's cache of friend lists, privacy answers and authors' newest events
/// (see `feed_cache.rs` and docs/proxy.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSection {
    /// An entry is used for at most this long after its data was read, in milliseconds
    /// (0 = no feed cache).
    pub cache_ttl_ms: u64,
    /// Friend lists held, in ids.
    pub cache_list_ids_max: usize,
    /// Privacy answers held.
    pub cache_privacy_max: usize,
    /// Author heads held, in events.
    pub cache_events_max: usize,
}

impl Default for FeedSection {
    fn default() -> Self {
        Self {
            cache_ttl_ms: FEED_CACHE_TTL_MS_DEFAULT,
            cache_list_ids_max: FEED_CACHE_LIST_IDS_DEFAULT,
            cache_privacy_max: FEED_CACHE_PRIVACY_DEFAULT,
            cache_events_max: FEED_CACHE_EVENTS_DEFAULT,
        }
    }
}

/// `[twin]`: writes that concern two shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinSection {
    /// The durable queue file of second halves; without it the queue lives in memory only and
    /// a proxy restart forgets halves not yet landed.
    pub queue: Option<PathBuf>,
    /// fdatasync the queue before acknowledging a twin write.
    pub fsync: bool,
    /// First retry delay, in milliseconds.
    pub retry_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for TwinSection {
    fn default() -> Self {
        Self {
            queue: None,
            fsync: true,
            retry_min_ms: TWIN_RETRY_MIN_MS_DEFAULT,
            retry_max_ms: TWIN_RETRY_MAX_MS_DEFAULT,
        }
    }
}

/// Which engine family a cluster serves: it decides the key grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Plain memcached keys.
    Kv,
    /// The messages grammar.
    Messages,
    /// The messages grammar, wall flavour.
    Wall,
    /// The friends grammar.
    Friends,
    /// The search grammar: item keys by owner, searches scattered to every shard and merged.
    Search,
    /// The news grammar, and the proxy's feed key.
    News,
    /// The lists grammar: lists by their id, `object_lists`/`delete object` on every shard.
    Lists,
}

impl Family {
    /// The engine name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Messages => "messages",
            Self::Wall => "wall",
            Self::Friends => "friends",
            Self::Search => "search",
            Self::News => "news",
            Self::Lists => "lists",
        }
    }
}

/// How keys are placed on shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// By owner id (VK's "firstint"): the key's primary owner, or an `N@` prefix.
    Owner,
    /// Consistent hashing of the whole key, ketama-compatible with libmemcached and twemproxy
    /// (md5, 160 points per shard, named `host` or `host:port` as they name servers).
    Ketama,
}

/// Which members of a shard serve reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// The primary while it is healthy, else a healthy replica.
    #[default]
    PrimaryFirst,
    /// Any healthy member, in turn.
    Any,
}

/// One `[[cluster]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name (stats, logs, reload matching).
    pub name: String,
    /// The engine family.
    pub engine: Family,
    /// Listen address (port 0 = ephemeral).
    pub listen: String,
    /// Placement (default: ketama for kv, owner for the others).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Owner ids per bucket step (`shard = |id| / step mod N`); nodes check step 1.
    #[serde(default = "one")]
    pub step: u32,
    /// Which members serve reads.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Key families (the key's name, e.g. `status`, `friends`) read through the cache tier.
    #[serde(default)]
    pub cache: Vec<String>,
    /// The shards, in bucket order.
    pub shards: Vec<ShardConfig>,
}

fn one() -> u32 {
    1
}

impl ClusterConfig {
    /// The placement in force.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(match self.engine {
            Family::Kv => Mode::Ketama,
            _ => Mode::Owner,
        })
    }
}

/// A shard: its primary and replicas. Written either as `"host:port"` or as a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardConfig {
    /// A primary without replicas.
    Addr(String),
    /// A primary with replicas, and an optional ketama name.
    Full {
        /// The primary's address.
        primary: String,
        /// Read replicas.
        #[serde(default)]
        replicas: Vec<String>,
        /// The name this shard has on a ketama ring (default: the primary's address).
        #[serde(default)]
        name: Option<String>,
    },
}

impl ShardConfig {
    /// The primary's address.
    #[must_use]
    pub fn primary(&self) -> &str {
        match self {
            Self::Addr(addr) | Self::Full { primary: addr, .. } => addr,
        }
    }

    /// The replicas' addresses.
    #[must_use]
    pub fn replicas(&self) -> &[String] {
        match self {
            Self::Addr(_) => &[],
            Self::Full { replicas, .. } => replicas,
        }
    }

    /// The name on a ketama ring: the configured one, else the primary's address written as
    /// libmemcached and twemproxy write it (`host` when the port is 11211, else `host:port`).
    #[must_use]
    pub fn ring_name(&self) -> String {
        if let Self::Full {
            name: Some(name), ..
        } = self
        {
            return name.clone();
        }
        let addr = self.primary();
        match addr.rsplit_once(':') {
            Some((host, "11211")) => host.to_string(),
            _ => addr.to_string(),
        }
    }
}

impl Config {
    /// Parses TOML and checks it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad setting.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file and checks it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the bad setting.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Toml(m) => ConfigError::Toml(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The effective configuration as TOML (`--print-config`).
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let p = &self.proxy;
        if p.connections_per_backend == 0 || p.connections_per_backend > CONNECTIONS_PER_BACKEND_MAX
        {
            return bad(format!(
                "proxy.connections_per_backend must be 1..={CONNECTIONS_PER_BACKEND_MAX}"
            ));
        }
        for (name, value) in [
            ("get_timeout_ms", p.get_timeout_ms),
            ("set_timeout_ms", p.set_timeout_ms),
            ("connect_timeout_ms", p.connect_timeout_ms),
            ("ping_interval_ms", p.ping_interval_ms),
            ("reconnect_min_ms", p.reconnect_min_ms),
            ("stuck_ms", p.stuck_ms),
            ("write_stall_timeout_ms", p.write_stall_timeout_ms),
        ] {
            if value == 0 || value > 600_000 {
                return bad(format!("proxy.{name} must be 1..=600000"));
            }
        }
        if p.reconnect_max_ms < p.reconnect_min_ms {
            return bad("proxy.reconnect_max_ms is below reconnect_min_ms".into());
        }
        if p.value_size_max == 0 || p.value_size_max > koshka_limits::VALUE_SIZE_MAX {
            return bad(format!(
                "proxy.value_size_max must be 1..={}",
                koshka_limits::VALUE_SIZE_MAX
            ));
        }
        let f = &self.feed;
        if f.cache_ttl_ms > FEED_CACHE_TTL_MS_MAX {
            return bad(format!(
                "feed.cache_ttl_ms must be 0..={FEED_CACHE_TTL_MS_MAX}"
            ));
        }
        for (name, value) in [
            ("cache_list_ids_max", f.cache_list_ids_max),
            ("cache_privacy_max", f.cache_privacy_max),
            ("cache_events_max", f.cache_events_max),
        ] {
            if value == 0 || value > FEED_CACHE_SIZE_MAX {
                return bad(format!("feed.{name} must be 1..={FEED_CACHE_SIZE_MAX}"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for cluster in &self.clusters {
            if !names.insert(cluster.name.as_str()) {
                return bad(format!("cluster {:?} is defined twice", cluster.name));
            }
            if cluster.shards.is_empty() || cluster.shards.len() > SHARDS_MAX {
                return bad(format!(
                    "cluster {:?} needs 1..={SHARDS_MAX} shards",
                    cluster.name
                ));
            }
            if cluster.step == 0 {
                return bad(format!("cluster {:?}: step must be positive", cluster.name));
            }
            if cluster.mode() == Mode::Ketama && cluster.engine != Family::Kv {
                return bad(format!(
                    "cluster {:?}: ketama placement is for plain kv keys only",
                    cluster.name
                ));
            }
            if !cluster.cache.is_empty() && cluster.engine == Family::Kv {
                return bad(format!(
                    "cluster {:?}: the cache tier fronts compiled-key engines, not kv",
                    cluster.name
                ));
            }
            if !cluster.cache.is_empty() && cluster.engine == Family::Lists {
                return bad(format!(
                    "cluster {:?}: the cache tier does not front lists (`delete object…` changes \
                     lists it does not name)",
                    cluster.name
                ));
            }
            for shard in &cluster.shards {
                for addr in std::iter::once(shard.primary())
                    .chain(shard.replicas().iter().map(String::as_str))
                {
                    if addr
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse::<u16>().ok())
                        .is_none()
                    {
                        return bad(format!(
                            "cluster {:?}: {addr:?} is not host:port",
                            cluster.name
                        ));
                    }
                }
            }
        }
        if self.clusters.is_empty() {
            return bad("no [[cluster]] configured".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_map() {
        let config = Config::from_toml(
            r#"
            [proxy]
            get_timeout_ms = 300
            [[cluster]]
            name = "kv"
            engine = "kv"
            listen = "127.0.0.1:0"
            shards = ["127.0.0.1:11211", { primary = "127.0.0.1:2", replicas = ["127.0.0.1:3"] }]
            [[cluster]]
            name = "friends"
            engine = "friends"
            listen = "127.0.0.1:0"
            cache = ["friends"]
            shards = ["127.0.0.1:4"]
            [[cluster]]
            name = "search"
            engine = "search"
            listen = "127.0.0.1:0"
            shards = ["127.0.0.1:5", "127.0.0.1:6"]
            "#,
        )
        .unwrap();
        assert_eq!(config.proxy.get_timeout_ms, 300);
        assert_eq!(config.feed, FeedSection::default());
        let edge = "[feed]\ncache_ttl_ms=60000\ncache_events_max=100000000\n[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']";
        assert_eq!(
            Config::from_toml(edge).unwrap().feed.cache_ttl_ms,
            FEED_CACHE_TTL_MS_MAX
        );
        assert_eq!(config.clusters[0].mode(), Mode::Ketama);
        assert_eq!(config.clusters[1].mode(), Mode::Owner);
        assert_eq!(config.clusters[2].engine, Family::Search);
        assert_eq!(config.clusters[2].mode(), Mode::Owner);
        assert_eq!(config.clusters[0].shards[0].ring_name(), "127.0.0.1");
        assert_eq!(config.clusters[0].shards[1].ring_name(), "127.0.0.1:2");
        assert_eq!(config.clusters[0].shards[1].replicas(), ["127.0.0.1:3"]);
        let again = Config::from_toml(&config.to_toml()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn refuses_bad_maps() {
        for text in [
            "",
            "[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=[]",
            "[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['nope']",
            "[[cluster]]\nname='a'\nengine='friends'\nlisten='x:0'\nmode='ketama'\nshards=['a:1']",
            "[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']\nbogus=1",
            "[proxy]\nget_timeout_ms=0\n[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']",
            "[feed]\ncache_ttl_ms=60001\n[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']",
            "[feed]\ncache_events_max=0\n[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']",
            "[feed]\ncache_privacy_max=100000001\n[[cluster]]\nname='a'\nengine='kv'\nlisten='x:0'\nshards=['a:1']",
        ] {
            assert!(Config::from_toml(text).is_err(), "{text}");
        }
    }
}
