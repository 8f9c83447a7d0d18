//! A cluster: its shards and their members, its placement rule, its counters.
//!
//! Placement:
//! * **owner** (compiled keys, VK's "firstint"): the key's primary owner as the key grammar
//!   names it (`koshka_keys::Route::owners`), so `viewer~owner:…` goes by the owner; an
//!   explicit `N@` prefix goes by `N`; a key the grammar refuses goes by its first integer (so
//!   the node answers the refusal with its own words); shard = `|id| / step mod N`;
//! * **ketama** (plain kv): [`crate::ring::Ring`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use koshka_proto::ParseConfig;

use crate::backend::{CallError, Member};
use crate::config::{ClusterConfig, Family, Mode, ProxySection, ReadFrom};
use crate::ring::Ring;
use crate::stats::ClusterStats;

/// One shard: its primary (`members[0]`) and replicas.
#[derive(Debug)]
pub struct Shard {
    /// Bucket number.
    pub index: u32,
    /// Primary first, then replicas.
    pub members: Vec<Arc<Member>>,
    next: AtomicUsize,
}

/// A cluster as configured.
#[derive(Debug)]
pub struct Cluster {
    /// Its configuration.
    pub config: ClusterConfig,
    /// The proxy-wide settings in force.
    pub settings: ProxySection,
    /// The shards in bucket order.
    pub shards: Vec<Shard>,
    /// Counters (shared with the cluster's previous versions across reloads).
    pub stats: Arc<ClusterStats>,
    /// How client requests are parsed (key length by family).
    pub parse: ParseConfig,
    ring: Option<Ring>,
}

impl Cluster {
    /// Builds a cluster, reusing the members of `reuse` (by address) so that a reload keeps
    /// their connections.
    pub async fn build(
        config: ClusterConfig,
        settings: &ProxySection,
        stats: Arc<ClusterStats>,
        reuse: &HashMap<String, Arc<Member>>,
    ) -> Cluster {
        let mut shards = Vec::with_capacity(config.shards.len());
        for (index, shard) in config.shards.iter().enumerate() {
            let mut members = Vec::new();
            for addr in
                std::iter::once(shard.primary()).chain(shard.replicas().iter().map(String::as_str))
            {
                let member = match reuse.get(addr) {
                    Some(member) => member.clone(),
                    None => Member::start(addr, settings).await,
                };
                members.push(member);
            }
            shards.push(Shard {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                members,
                next: AtomicUsize::new(0),
            });
        }
        let ring = (config.mode() == Mode::Ketama).then(|| {
            let names: Vec<String> = config.shards.iter().map(|s| s.ring_name()).collect();
            Ring::new(&names)
        });
        let key_len_max = match config.engine {
            Family::Kv => koshka_limits::KEY_LEN_MAX,
            _ => koshka_limits::COMPILED_KEY_LEN_MAX,
        };
        let parse = ParseConfig {
            key_len_max,
            value_size_max: settings.value_size_max,
            ..ParseConfig::default()
        };
        Cluster {
            config,
            settings: settings.clone(),
            shards,
            stats,
            parse,
            ring,
        }
    }

    /// Every member, for reuse on reload and for `#targets`.
    pub fn members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.shards.iter().flat_map(|s| s.members.iter())
    }

    /// Number of shards.
    #[must_use]
    pub fn count(&self) -> u32 {
        u32::try_from(self.shards.len()).unwrap_or(u32::MAX)
    }

    /// The engine family.
    #[must_use]
    pub fn family(&self) -> Family {
        self.config.engine
    }

    /// The shard of owner id `id`: `|id| / step mod N`.
    #[must_use]
    pub fn shard_of_owner(&self, id: i64) -> u32 {
        let bucket = id.unsigned_abs() / u64::from(self.config.step.max(1));
        let shard = bucket % u64::from(self.count().max(1));
        u32::try_from(shard).unwrap_or(0)
    }

    /// The shard of a plain (kv) key on the ketama ring, or of a compiled key by its prefix or
    /// first integer (see [`first_int`]).
    #[must_use]
    pub fn shard_of_plain(&self, key: &[u8]) -> u32 {
        match &self.ring {
            Some(ring) => ring.lookup(key),
            None => self.shard_of_owner(first_int(key).unwrap_or(0)),
        }
    }

    /// The member that serves reads of `shard`.
    ///
    /// # Errors
    /// [`CallError::Down`] when no member is usable.
    pub fn reader(&self, shard: u32) -> Result<&Arc<Member>, CallError> {
        let shard = &self.shards[shard as usize];
        let members = &shard.members;
        match self.config.read_from {
            ReadFrom::PrimaryFirst => members.iter().find(|m| m.usable()),
            ReadFrom::Any => {
                let start = shard.next.fetch_add(1, Ordering::Relaxed);
                (0..members.len())
                    .map(|i| &members[(start + i) % members.len()])
                    .find(|m| m.usable())
            }
        }
        .ok_or_else(|| CallError::Down {
            addr: format!("shard {} ({})", shard.index, members[0].addr),
        })
    }

    /// The member that takes writes of `shard`: its primary.
    ///
    /// # Errors
    /// [`CallError::Down`] when the primary is not usable (writes never go to a replica).
    pub fn writer(&self, shard: u32) -> Result<&Arc<Member>, CallError> {
        let shard = &self.shards[shard as usize];
        let primary = &shard.members[0];
        if primary.usable() {
            Ok(primary)
        } else {
            Err(CallError::Down {
                addr: format!("shard {} primary {}", shard.index, primary.addr),
            })
        }
    }
}

/// VK's "firstint": an `N@` prefix, else the number after `~` when the key starts with a
/// number followed by `~`, else the first decimal number in the key (sign dropped).
#[must_use]
pub fn first_int(key: &[u8]) -> Option<i64> {
    let (prefix, rest) = koshka_keys::idiom::split_route(key);
    if let Some(prefix) = prefix {
        return std::str::from_utf8(prefix).ok()?.parse().ok();
    }
    let digits = |s: &[u8]| -> Option<(i64, usize)> {
        let start = s.iter().position(u8::is_ascii_digit)?;
        let len = s[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        let n = std::str::from_utf8(&s[start..start + len])
            .ok()?
            .parse()
            .ok()?;
        Some((n, start + len))
    };
    let (first, end) = digits(rest)?;
    if rest.first().is_some_and(u8::is_ascii_digit) && rest.get(end) == Some(&b'~') {
        if let Some((owner, _)) = digits(&rest[end + 1..]) {
            return Some(owner);
        }
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_int_follows_vk() {
        assert_eq!(first_int(b"friends17"), Some(17));
        assert_eq!(first_int(b"98@friends17"), Some(98));
        assert_eq!(first_int(b"30~10:album17"), Some(10));
        assert_eq!(first_int(b"message-5_3"), Some(5));
        assert_eq!(first_int(b"sublists_types"), None);
    }
}
