//! Where a key goes: a plan per key, decided from the key grammar types alone
//! (`koshka_keys`), never from engine state.

use koshka_keys::friends::{DeleteKey, GetKey, IncrKey, ListRef, SetKey};
use koshka_keys::messages::{Query, Update};
use koshka_keys::{Merge, Route, Verb};

use crate::cluster::Cluster;
use crate::config::Family;

/// How a retrieval key is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Forward the key unchanged to this shard.
    Shard(u32),
    /// `newmsgid<owner>#<tag>`: answered by the proxy from the ids its own handshakes
    /// learned on this client connection.
    NewId {
        /// Mailbox.
        owner: i64,
        /// The client's tag.
        tag: Vec<u8>,
    },
    /// A friends key the proxy answers by asking several shards, or that names a temp list
    /// the proxy holds for this client connection.
    Friends(GetKey<'static>),
    /// A friends key with an `N@` prefix that names a temp list: shard `N` answers alone (the
    /// prefix chose it), with the client's list sent along.
    Pinned {
        /// The key.
        get: GetKey<'static>,
        /// The shard the prefix names.
        shard: u32,
    },
    /// A search without an owner filter (`search#…`): every shard is asked for its share of
    /// the window and the answers are merged (`crate::search`).
    Search(koshka_keys::search::Search),
    /// A proxy admin key (`#…`).
    Admin,
    /// `feed<viewer>…` on a news cluster: the proxy assembles the feed (`crate::feed`).
    Feed,
    /// A lists key the proxy answers itself (`crate::lists`): `object_lists<obj>` asked of
    /// every shard and united (`shard` is `None`), or a key naming a temp list the proxy holds
    /// for this client connection, sent with the list to `shard`.
    Lists {
        /// The key.
        get: koshka_keys::lists::GetKey,
        /// The one shard that answers, `None` for every shard.
        shard: Option<u32>,
    },
}

/// How an update is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritePlan {
    /// Forward unchanged to this shard's primary.
    Shard(u32),
    /// A messages/wall update that allocates an id (`newmsg`, `sendmsg`, `newpost`, `repost`,
    /// `status`): the proxy runs the new-id handshake, and splits a send between shards.
    Create(Update),
    /// `set friend<u>_<f>` with `u` and `f` on different shards: two `friend_half` writes.
    FriendAdd {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
    },
    /// `delete friend<u>_<f>` with `u` and `f` on different shards.
    FriendDelete {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
    },
    /// `delete user<u>`: the user's own shard, then `u`'s halves on other shards.
    UserDelete {
        /// The user.
        user: u32,
    },
    /// `set temp<tag>`: a temp list the proxy keeps for this client connection.
    Temp {
        /// The tag.
        tag: String,
    },
    /// `delete object<obj>` of the lists grammar: every shard removes the object from its
    /// lists; `DELETED` when any did.
    ObjectDelete,
}

/// The plan for a retrieval key.
#[must_use]
pub fn read(cluster: &Cluster, key: &[u8]) -> ReadPlan {
    if key.first() == Some(&b'#') {
        return ReadPlan::Admin;
    }
    let (prefix, _) = koshka_keys::idiom::split_route(key);
    let plain = || ReadPlan::Shard(cluster.shard_of_plain(key));
    match cluster.family() {
        Family::Kv => plain(),
        Family::Messages | Family::Wall => match Query::parse(key) {
            Ok(Query::NewId { owner, tag }) => ReadPlan::NewId { owner, tag },
            Ok(_) if prefix.is_some() => plain(),
            Ok(query) => match query.owner() {
                Some(owner) => ReadPlan::Shard(cluster.shard_of_owner(owner)),
                None => ReadPlan::Shard(0),
            },
            Err(_) => plain(),
        },
        // The plan outlives `key` (the scatter task owns it): detach the parsed key.
        Family::Friends => match GetKey::parse(key).map(GetKey::into_owned) {
            Ok(get) => match prefix {
                None => friends_read(cluster, get),
                Some(_) => pin_read(cluster, key, get),
            },
            Err(_) => plain(),
        },
        Family::Search => search_read(cluster, key, prefix.is_some()),
        Family::News => news_read(cluster, key, prefix.is_some()),
        Family::Lists => lists_read(cluster, key, prefix.is_some()),
    }
}

/// A lists key: by its list's shard; `object_lists` on every shard; a temp list reference
/// resolved by the proxy. An `N@` prefix sends the key to shard `N` (with the client's temp
/// list, when it names one); a key the grammar refuses goes by its first integer.
fn lists_read(cluster: &Cluster, key: &[u8], prefixed: bool) -> ReadPlan {
    use koshka_keys::lists::{GetKey as ListsKey, ListRef as Ids};
    let Ok(get) = ListsKey::parse(key) else {
        return ReadPlan::Shard(cluster.shard_of_plain(key));
    };
    let shard = match (prefixed, Route::owners(&get).primary()) {
        (true, _) => Some(cluster.shard_of_plain(key)),
        (false, Some(owner)) => Some(cluster.shard_of_owner(owner)),
        (false, None) => None,
    };
    match (&get, shard) {
        (
            ListsKey::Intersect {
                ids: Ids::Temp(_), ..
            },
            _,
        )
        | (_, None) => ReadPlan::Lists { get, shard },
        (_, Some(shard)) => ReadPlan::Shard(shard),
    }
}

/// A search-grammar key: an item key on its owner's shard, a search with an owner filter on
/// that owner's shard, any other search on every shard. A key that does not parse goes to a
/// shard by its first number, whose node answers `CLIENT_ERROR`; an `N@` prefix sends the key
/// unchanged to shard `N`.
fn search_read(cluster: &Cluster, key: &[u8], prefixed: bool) -> ReadPlan {
    use koshka_keys::search::Query as SearchQuery;
    let plain = || ReadPlan::Shard(cluster.shard_of_plain(key));
    match SearchQuery::parse(key) {
        Ok(_) if prefixed => plain(),
        Ok(query) => match (query.merge(), query) {
            (Merge::Search, SearchQuery::Search(search)) => ReadPlan::Search(search),
            (_, query) => match Route::owners(&query).primary() {
                Some(owner) => ReadPlan::Shard(cluster.shard_of_owner(owner)),
                None => ReadPlan::Shard(0),
            },
        },
        Err(_) => plain(),
    }
}

/// A news key: the feed is the proxy's; others go to their author's or recipient's shard
/// (an `N@` prefix, or a key the grammar refuses, goes by the first integer).
fn news_read(cluster: &Cluster, key: &[u8], prefixed: bool) -> ReadPlan {
    if koshka_keys::idiom::split_route(key).1.starts_with(b"feed") {
        return ReadPlan::Feed;
    }
    match koshka_keys::news::GetKey::parse(key) {
        Ok(get) if !prefixed => match Route::owners(&get).primary() {
            Some(owner) => ReadPlan::Shard(cluster.shard_of_owner(owner)),
            None => ReadPlan::Shard(cluster.shard_of_plain(key)),
        },
        _ => ReadPlan::Shard(cluster.shard_of_plain(key)),
    }
}

/// A friends key with an `N@` prefix. A prefix that names the shard of the key's primary
/// owner (what VK clients write) changes nothing: merges and temp lists work as without it.
/// Another shard answers alone, as the prefix asks (a node there refuses owners it does not
/// hold), with the client's temp list sent along.
fn pin_read(cluster: &Cluster, key: &[u8], get: GetKey<'static>) -> ReadPlan {
    let pinned = cluster.shard_of_plain(key);
    let owner = Route::owners(&get).primary();
    if owner.is_some_and(|o| cluster.shard_of_owner(o) == pinned) {
        return friends_read(cluster, get);
    }
    if names_temp(&get) {
        return ReadPlan::Pinned { get, shard: pinned };
    }
    ReadPlan::Shard(pinned)
}

/// Whether `get` names a temp list (`…:-<tag>`), which lives in the proxy's session.
fn names_temp(get: &GetKey<'_>) -> bool {
    matches!(
        get,
        GetKey::FriendsAmong {
            list: ListRef::Temp(_),
            ..
        } | GetKey::CommonCounts {
            list: ListRef::Temp(_),
            ..
        }
    )
}

fn friends_read(cluster: &Cluster, get: GetKey<'static>) -> ReadPlan {
    if names_temp(&get) {
        return ReadPlan::Friends(get);
    }
    let owners = Route::owners(&get).to_vec();
    let Some(primary) = owners.first().map(|o| cluster.shard_of_owner(*o)) else {
        return ReadPlan::Shard(0);
    };
    let spread = owners.iter().any(|o| cluster.shard_of_owner(*o) != primary);
    match get.merge() {
        Merge::PrivacyCheck | Merge::IntersectIds | Merge::SumCounts if spread => {
            ReadPlan::Friends(get)
        }
        _ => ReadPlan::Shard(primary),
    }
}

/// The plan for an update (`verb` with `key`; `value` is the data of a `set`). An `N@`
/// prefix that names the shard of the key's primary owner changes nothing (cross-shard sends
/// and friendships are still split, handshakes still run); one that names another shard sends
/// the update there unchanged, as the prefix asks.
#[must_use]
pub fn write(cluster: &Cluster, verb: Verb, key: &[u8], value: &[u8]) -> WritePlan {
    let plan = write_by_owner(cluster, verb, key, value);
    if koshka_keys::idiom::split_route(key).0.is_none() {
        return plan;
    }
    let pinned = cluster.shard_of_plain(key);
    let primary = match &plan {
        WritePlan::Shard(shard) => Some(*shard),
        WritePlan::Create(update) => Some(cluster.shard_of_owner(Update::owners(update).0)),
        WritePlan::FriendAdd { user, .. }
        | WritePlan::FriendDelete { user, .. }
        | WritePlan::UserDelete { user } => Some(cluster.shard_of_owner(i64::from(*user))),
        // The proxy keeps temp lists whatever the prefix.
        WritePlan::Temp { .. } => None,
        // Every shard's: a prefix names one.
        WritePlan::ObjectDelete => None,
    };
    match (primary, plan) {
        (None, WritePlan::ObjectDelete) => WritePlan::Shard(pinned),
        (Some(shard), _) if shard != pinned => WritePlan::Shard(pinned),
        (_, plan) => plan,
    }
}

fn write_by_owner(cluster: &Cluster, verb: Verb, key: &[u8], value: &[u8]) -> WritePlan {
    let plain = || WritePlan::Shard(cluster.shard_of_plain(key));
    let owner_shard = |owner: u32| WritePlan::Shard(cluster.shard_of_owner(i64::from(owner)));
    match cluster.family() {
        Family::Kv => plain(),
        Family::Messages | Family::Wall => {
            let update = match verb {
                Verb::Set => Update::parse_set(key, value),
                Verb::Delete => Update::parse_delete(key),
                // incr/decr route by owner only: the delta is checked by the node.
                _ => Update::parse_incr(key, 0),
            };
            match update {
                Ok(
                    update @ (Update::NewMessage { .. }
                    | Update::Send { .. }
                    | Update::NewPost { .. }
                    | Update::Repost { .. }
                    | Update::Status { .. }),
                ) => WritePlan::Create(update),
                Ok(update) => WritePlan::Shard(cluster.shard_of_owner(Update::owners(&update).0)),
                Err(_) => plain(),
            }
        }
        Family::Search => {
            use koshka_keys::search::Update as SearchUpdate;
            let update = match verb {
                Verb::Set => SearchUpdate::parse_set(key, value),
                Verb::Delete => SearchUpdate::parse_delete(key),
                // incr/decr route by owner only: the delta is checked by the node.
                _ => SearchUpdate::parse_incr(key, 0),
            };
            match update {
                Ok(update) => WritePlan::Shard(cluster.shard_of_owner(update.item().0)),
                Err(_) => plain(),
            }
        }
        Family::Friends => match verb {
            Verb::Set => match SetKey::parse(key) {
                Ok(SetKey::Temp { tag }) => WritePlan::Temp { tag },
                Ok(SetKey::Friend {
                    user,
                    friend,
                    half: false,
                }) if split(cluster, user, friend) => WritePlan::FriendAdd { user, friend },
                Ok(set) => match Route::owners(&set).primary() {
                    Some(owner) => WritePlan::Shard(cluster.shard_of_owner(owner)),
                    None => plain(),
                },
                Err(_) => plain(),
            },
            Verb::Delete => match DeleteKey::parse(key) {
                Ok(DeleteKey::Friend {
                    user,
                    friend,
                    half: false,
                }) if split(cluster, user, friend) => WritePlan::FriendDelete { user, friend },
                Ok(DeleteKey::User { user }) => WritePlan::UserDelete { user },
                Ok(delete) => match Route::owners(&delete).primary() {
                    Some(owner) => WritePlan::Shard(cluster.shard_of_owner(owner)),
                    None => plain(),
                },
                Err(_) => plain(),
            },
            _ => match IncrKey::parse(key) {
                Ok(incr) => owner_shard(incr.user),
                Err(_) => plain(),
            },
        },
        Family::News => {
            use koshka_keys::news::{DeleteKey, SetKey};
            let owners = match verb {
                Verb::Set => SetKey::parse(key).map(|k| Route::owners(&k).primary()),
                Verb::Delete => DeleteKey::parse(key).map(|k| Route::owners(&k).primary()),
                _ => Ok(None),
            };
            match owners {
                Ok(Some(owner)) => WritePlan::Shard(cluster.shard_of_owner(owner)),
                _ => plain(),
            }
        }
        Family::Lists => lists_write(cluster, verb, key),
    }
}

/// A lists update: by its list's shard; `set temp…` kept by the proxy; `delete object…` on
/// every shard.
fn lists_write(cluster: &Cluster, verb: Verb, key: &[u8]) -> WritePlan {
    use koshka_keys::lists::{DeleteKey, IncrKey, SetKey};
    let owner = match verb {
        Verb::Set => match SetKey::parse(key) {
            Ok(SetKey::Temp { tag }) => return WritePlan::Temp { tag },
            parsed => parsed.map(|k| Route::owners(&k).primary()),
        },
        Verb::Delete => match DeleteKey::parse(key) {
            Ok(DeleteKey::Object { .. }) => return WritePlan::ObjectDelete,
            parsed => parsed.map(|k| Route::owners(&k).primary()),
        },
        _ => IncrKey::parse(key).map(|k| Route::owners(&k).primary()),
    };
    match owner {
        Ok(Some(owner)) => WritePlan::Shard(cluster.shard_of_owner(owner)),
        _ => WritePlan::Shard(cluster.shard_of_plain(key)),
    }
}

fn split(cluster: &Cluster, a: u32, b: u32) -> bool {
    cluster.shard_of_owner(i64::from(a)) != cluster.shard_of_owner(i64::from(b))
}
