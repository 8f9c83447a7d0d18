//! The routing vocabulary: what a router needs to know about a key without engine state.
//!
//! A router (the proxy) sends a key to the shard of its *primary owner* (VK's "firstint": the
//! first id of the key, or the owner after `~` in a privacy check), to a replica for a
//! [`Access::Read`] and to the primary for a [`Access::Write`]. When a key names owners on
//! several shards, [`Merge`] says how the shards' answers combine into the one reply the client
//! gets; `docs/protocol/README.md` lists the rule of every key.

use crate::shard_of;

/// The user ids a key names whose data it reads or writes. The first one is the *primary
/// owner*: the shard a router sends the key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owners {
    /// No owner (`sublists_types`, `temp<tag>`): any shard answers the same, or the key is
    /// per-connection state (see [`Access::Session`]).
    None,
    /// One owner (almost every key).
    One(i64),
    /// Two owners, the primary first: a send (sender, recipient), a two-sided friendship, a
    /// repost (wall, original wall), a common-friends pair, a privacy check (owner, viewer).
    Two(i64, i64),
    /// The primary owner, then the ids of a list the key carries (`common_friends_num<uid>:<ids>`).
    /// Ids may repeat.
    List(Vec<i64>),
}

impl Owners {
    /// The primary owner, if any.
    #[must_use]
    pub fn primary(&self) -> Option<i64> {
        match self {
            Self::None => None,
            Self::One(id) | Self::Two(id, _) => Some(*id),
            Self::List(ids) => ids.first().copied(),
        }
    }

    /// Every owner, the primary first.
    #[must_use]
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            Self::None => Vec::new(),
            Self::One(id) => vec![*id],
            Self::Two(a, b) => vec![*a, *b],
            Self::List(ids) => ids.clone(),
        }
    }

    /// The distinct shards of the owners among `count` shards, the primary owner's first.
    #[must_use]
    pub fn shards(&self, count: u32) -> Vec<u32> {
        let mut shards: Vec<u32> = Vec::new();
        for id in self.to_vec() {
            let shard = shard_of(id, count);
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        shards
    }
}

/// Whether a key reads or changes shard data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads shard data only; a replica may answer.
    Read,
    /// Changes shard data; only the shard's primary may apply it.
    Write,
    /// Reads or writes per-connection state only (`set temp<tag>`, `get newmsgid<uid>#<tag>`):
    /// it must travel on the same backend connection as the keys it pairs with (a temp list is
    /// stored ahead of the get that names it on every shard that get goes to; the id a tagged
    /// send allocated is read on the connection that sent it).
    Session,
}

/// How the answers of several shards combine into one reply. A key whose owners all live on
/// one shard is answered by that shard alone, whatever its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Merge {
    /// One shard answers and its reply is the reply: the primary owner's shard (a key without
    /// owner: any shard). Other owners the key names must live on that shard too, or the shard
    /// answers `CLIENT_ERROR wrong shard`.
    Single,
    /// A write that must happen on every owner's shard (the documented per-shard rewrites when
    /// the owners' shards differ, e.g. `sendmsg` → two `newmsg` and a `peer_msg_id`,
    /// `friend` → two `friend_half`). The write succeeded when every part did; otherwise the
    /// first error (or `NOT_STORED`/`NOT_FOUND`) is the reply.
    AllOk,
    /// A removal spread over the owners' shards (`delete friend<u>_<f>` → two
    /// `friend_half`): `DELETED` when any part deleted something, else `NOT_FOUND`.
    AnyOk,
    /// Each owner's shard contributes the ascending, count-prefixed id list of its owner
    /// (`friends<uid>`); the reply is their intersection, `count,id,…` ascending
    /// (`common_friends<u1>,<u2>`).
    IntersectIds,
    /// Each shard answers a vector `n,c1,…,cn` with `-1` for entries it cannot compute (a listed
    /// user on another shard); vectors combine element-wise, a `-1` yielding to any other
    /// shard's value and known values adding up (VK's friends merge sums partial counts)
    /// (`common_friends_num<uid>:<ids>`).
    SumCounts,
    /// The owner's shard answers one character per privacy key; a `1` or `2` ("depends on
    /// whether the viewer is a friend of a friend") is resolved on the viewer's shard with
    /// `common_friends<viewer>:-<tag>` over the owner's friends: a non-zero count turns `1`
    /// into `3` and `2` into `0`, a zero count `1` into `0` and `2` into `3`
    /// (`viewer~owner:key,…`).
    PrivacyCheck,
    /// A search (`search#…(…)` of the search grammar): sent to **every** shard (whatever
    /// [`Owners`] says, unless it names one owner, when that owner's shard answers alone),
    /// rewritten per shard by `koshka_keys::search::Search::per_shard`; the answers merge with
    /// `koshka_keys::search::merge` (heap by the order, dedup by content hash, totals summed,
    /// offset and limit applied, unsure shards re-asked).
    Search,
}

/// What every grammar type tells a router.
pub trait Route {
    /// The owners the key names, the primary first.
    fn owners(&self) -> Owners;
    /// Whether the key reads or writes.
    fn access(&self) -> Access;
    /// How the answers of several shards combine.
    fn merge(&self) -> Merge;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_list_their_shards_primary_first() {
        assert_eq!(Owners::None.primary(), None);
        assert_eq!(Owners::Two(5, 8).primary(), Some(5));
        assert_eq!(Owners::Two(5, 8).shards(2), vec![1, 0]);
        assert_eq!(Owners::List(vec![4, 6, 3, 8]).shards(2), vec![0, 1]);
        assert_eq!(Owners::List(Vec::new()).primary(), None);
        assert_eq!(Owners::One(-3).shards(2), vec![1]);
    }
}
