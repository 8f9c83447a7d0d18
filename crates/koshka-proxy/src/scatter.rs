//! Scatter/gather for friends keys whose owners live on several shards, after the merge rule
//! each key's grammar type names (`koshka_keys::Merge`), and for keys naming a temp list the
//! proxy holds for its client (`-tag`).
//!
//! * `IntersectIds` (`common_friends<u1>,<u2>`): `friends<u1>` and `friends<u2>` from their
//!   shards in parallel; the reply is the intersection, `count,id,…` ascending. Two users of
//!   one shard are that shard's question.
//! * `SumCounts` (`common_friends_num<uid>:<list>`): the owner's shard answers with `-1` for
//!   listed users elsewhere; meanwhile `friends<uid>` is read; each other shard holding
//!   listed users gets that list as a temp list and is asked `common_friends<x>:-<tag>` for
//!   each of them; their counts replace the `-1`s.
//! * `PrivacyCheck` (`viewer~owner:keys`): the owner's shard answers; when some answer is `1`
//!   or `2` (friend of a friend decides), `friends<owner>` goes to the viewer's shard as a temp
//!   list and `common_friends<viewer>:-<tag>` decides: a common friend turns `1` into `3` and
//!   `2` into `0`, none `1` into `0` and `2` into `3`.
//!
//! A temp list always travels in the same call as the get that names it (one backend
//! connection, contiguous bytes) under a proxy-unique tag.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koshka_keys::friends::{GetKey, ListRef};
use koshka_keys::idiom::{encode_id_list, CountedList};
use koshka_keys::Encode;
use koshka_proto::{encode, parse_reply, ParsedReply, Reply};
use tokio::time::Instant;

use crate::backend::{CallError, Frames};
use crate::cluster::Cluster;
use crate::conn::{values_part, Part, PartFuture, Session};
use crate::stats::bump;
use crate::Shared;

/// Answers a friends key over several shards (or with the session's temp lists); `pinned`
/// (an `N@` prefix) makes that one shard answer alone.
pub fn friends(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    key: Vec<u8>,
    get: GetKey<'static>,
    pinned: Option<u32>,
    session: &Session,
) -> PartFuture {
    // Resolve the client's temp list now: the session is not shared with the task.
    let get = match resolve_temp(get, session) {
        Ok(get) => get,
        Err(line) => return Box::pin(std::future::ready(Part::Error(line.into()))),
    };
    let affinity = session.id;
    Box::pin(async move {
        let deadline = Instant::now() + Duration::from_millis(cluster.settings.get_timeout_ms);
        let gather = Gather {
            cluster: &cluster,
            shared: &shared,
            affinity,
            deadline,
        };
        let answer = match (&get, pinned) {
            (_, Some(shard)) => gather.on_shard(&get, shard).await,
            (GetKey::CommonFriends { user, other }, None)
                if gather.shard(*user) == gather.shard(*other) =>
            {
                gather.on_shard(&get, gather.shard(*user)).await
            }
            (GetKey::CommonFriends { user, other }, None) => gather.intersect(*user, *other).await,
            (GetKey::CommonCounts { user, list }, None) => gather.counts(*user, list).await,
            (GetKey::Check { viewer, owner, .. }, None) => {
                gather.check(&get, *viewer, *owner).await
            }
            (GetKey::FriendsAmong { user, .. }, None) => {
                gather.on_shard(&get, gather.shard(*user)).await
            }
            (_, None) => gather.on_shard(&get, 0).await,
        };
        match answer {
            Ok(Some(text)) => {
                let mut out = Vec::new();
                koshka_proto::reply::value(&mut out, &key, 0, &text, None);
                Part::Values(out.into(), 1)
            }
            Ok(None) => Part::Values(Bytes::new(), 0),
            Err(Fail::Reply(line)) => Part::Error(line),
            Err(Fail::Call(CallError::Timeout { .. })) => {
                bump(&cluster.stats.shard_timeouts);
                Part::Missed
            }
            Err(Fail::Call(_)) => {
                bump(&cluster.stats.shard_unavailable);
                Part::Missed
            }
        }
    })
}

/// A temp list reference replaced by the list the client stored on this connection.
fn resolve_temp(get: GetKey<'static>, session: &Session) -> Result<GetKey<'static>, Vec<u8>> {
    let lookup = |tag: &str| {
        session.temp(tag).cloned().ok_or_else(|| {
            format!("CLIENT_ERROR no temp list {tag:?} on this connection\r\n").into_bytes()
        })
    };
    Ok(match get {
        GetKey::FriendsAmong {
            user,
            list: ListRef::Temp(tag),
        } => GetKey::FriendsAmong {
            user,
            list: ListRef::Inline(lookup(&tag)?),
        },
        GetKey::CommonCounts {
            user,
            list: ListRef::Temp(tag),
        } => GetKey::CommonCounts {
            user,
            list: ListRef::Inline(lookup(&tag)?),
        },
        other => other,
    })
}

/// Why a gathered answer failed (also the feed's).
pub(crate) enum Fail {
    /// A shard's error line: the client's reply.
    Reply(Bytes),
    /// A shard did not answer.
    Call(CallError),
}

impl From<CallError> for Fail {
    fn from(e: CallError) -> Self {
        Fail::Call(e)
    }
}

struct Gather<'a> {
    cluster: &'a Cluster,
    shared: &'a Shared,
    affinity: usize,
    deadline: Instant,
}

/// The one value of a retrieval frame, `None` for a miss; an error line is a [`Fail`].
fn one_value(frame: &Bytes) -> Result<Option<Vec<u8>>, Fail> {
    match values_part(frame.clone()) {
        Part::Values(_, 0) => Ok(None),
        Part::Values(..) => match parse_reply(frame, &koshka_proto::ReplyConfig::DEFAULT) {
            ParsedReply::Done {
                reply: Reply::Values(values),
                ..
            } => Ok(values.iter().next().map(|v| v.data.to_vec())),
            _ => Ok(None),
        },
        Part::Error(line) => Err(Fail::Reply(line)),
        Part::Missed | Part::Merged { .. } => Ok(None),
    }
}

/// The one value of a retrieval frame, `None` for a miss, `Err` with a shard's error line.
pub(crate) fn first_value(frame: &Bytes) -> Result<Option<Vec<u8>>, Bytes> {
    match one_value(frame) {
        Ok(value) => Ok(value),
        Err(Fail::Reply(line)) => Err(line),
        Err(Fail::Call(_)) => Ok(None),
    }
}

fn ids(value: Option<Vec<u8>>) -> Vec<u32> {
    value
        .and_then(|v| CountedList::parse(&v).ok())
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|i| u32::try_from(i).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of a `friends_packed…` value: the total, then each id, 4-byte little-endian
/// unsigned integers. A miss is no ids; a value of another length is the shard's error.
fn packed_ids(value: Option<Vec<u8>>) -> Result<Vec<u32>, Fail> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    if value.len() < 4 || value.len() % 4 != 0 {
        return Err(Fail::Reply(Bytes::from(format!(
            "SERVER_ERROR a shard answered a packed friend list of {} bytes\r\n",
            value.len()
        ))));
    }
    Ok(value[4..]
        .chunks_exact(4)
        .map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
        .collect())
}

/// The ids of `user`'s friends, ascending, where `get` sends a one-key `get` request to the
/// user's shard and returns its value (`None` for a miss): `friends_packed<user>` (nothing to
/// format or parse), or `friends<user>` from a node that does not know that key yet
/// (answering `CLIENT_ERROR`), so a proxy can be upgraded before its nodes.
pub(crate) async fn friend_ids<F, Fut>(user: u32, mut get: F) -> Result<Vec<u32>, Fail>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<u8>>, Fail>>,
{
    let request = |key: String| {
        let mut bytes = Vec::new();
        encode::get(&mut bytes, [key]);
        bytes
    };
    match get(request(format!("friends_packed{user}"))).await {
        Err(Fail::Reply(line)) if line.starts_with(b"CLIENT_ERROR") => {
            Ok(ids(get(request(format!("friends{user}"))).await?))
        }
        answer => packed_ids(answer?),
    }
}

/// The ids both ascending lists hold, ascending.
fn intersection(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut common = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    common
}

impl Gather<'_> {
    async fn call(&self, shard: u32, bytes: Vec<u8>, frames: usize) -> Result<Frames, CallError> {
        let member = self.cluster.reader(shard)?.clone();
        member
            .call(Bytes::from(bytes), frames, self.affinity, self.deadline)
            .await
    }

    fn shard(&self, id: u32) -> u32 {
        self.cluster.shard_of_owner(i64::from(id))
    }

    /// `get <key>` on `shard`, an id list (a resolved temp list) sent as a temp list.
    async fn on_shard(&self, get: &GetKey<'_>, shard: u32) -> Result<Option<Vec<u8>>, Fail> {
        let mut bytes = Vec::new();
        let mut frames = 1;
        let key = match get {
            GetKey::FriendsAmong {
                user,
                list: ListRef::Inline(list),
            }
            | GetKey::CommonCounts {
                user,
                list: ListRef::Inline(list),
            } => {
                let tag = self.shared.next_tag();
                self.temp(&mut bytes, &tag, list);
                frames = 2;
                let list = ListRef::Temp(tag);
                match get {
                    GetKey::FriendsAmong { .. } => GetKey::FriendsAmong { user: *user, list },
                    _ => GetKey::CommonCounts { user: *user, list },
                }
                .to_bytes()
            }
            other => other.to_bytes(),
        };
        encode::get(&mut bytes, [&key]);
        let replies = self.call(shard, bytes, frames).await?;
        self.check_stored(&replies[..frames - 1])?;
        one_value(&replies[frames - 1])
    }

    /// Appends `set temp<tag> <ids>`.
    fn temp(&self, out: &mut Vec<u8>, tag: &str, list: &[u32]) {
        let mut value = Vec::new();
        encode_id_list(&mut value, list);
        encode::set(out, format!("temp{tag}").as_bytes(), &value);
    }

    fn check_stored(&self, frames: &[Bytes]) -> Result<(), Fail> {
        match frames.iter().find(|f| f.as_ref() != b"STORED\r\n") {
            Some(line) => Err(Fail::Reply(line.clone())),
            None => Ok(()),
        }
    }

    async fn friends_of(&self, user: u32) -> Result<Vec<u32>, Fail> {
        friend_ids(user, |bytes| async move {
            let frames = self.call(self.shard(user), bytes, 1).await?;
            one_value(&frames[0])
        })
        .await
    }

    /// `common_friends<user>,<other>` over two shards.
    async fn intersect(&self, user: u32, other: u32) -> Result<Option<Vec<u8>>, Fail> {
        bump(&self.cluster.stats.fanout_requests);
        let (a, b) = tokio::join!(self.friends_of(user), self.friends_of(other));
        let common = intersection(&a?, &b?);
        let mut out = Vec::with_capacity(11 * (common.len() + 1));
        koshka_keys::idiom::push_uint(&mut out, common.len() as u64);
        for id in common {
            out.push(b',');
            koshka_keys::idiom::push_uint(&mut out, u64::from(id));
        }
        Ok(Some(out))
    }

    /// How many of `list`'s friends each `candidates` user shares with, on `shard`
    /// (`common_friends<x>:-<tag>` per candidate, the list sent once as a temp list).
    async fn shared_counts(
        &self,
        shard: u32,
        list: &[u32],
        candidates: &[u32],
    ) -> Result<Vec<u64>, Fail> {
        let tag = self.shared.next_tag();
        let mut bytes = Vec::new();
        self.temp(&mut bytes, &tag, list);
        for x in candidates {
            let key = GetKey::FriendsAmong {
                user: *x,
                list: ListRef::Temp(tag.clone()),
            }
            .to_bytes();
            encode::get(&mut bytes, [&key]);
        }
        let frames = self.call(shard, bytes, 1 + candidates.len()).await?;
        self.check_stored(&frames[..1])?;
        frames[1..]
            .iter()
            .map(|frame| {
                Ok(one_value(frame)?
                    .and_then(|v| CountedList::parse(&v).ok())
                    .map_or(0, |l| l.total))
            })
            .collect()
    }

    /// `common_friends_num<user>:<list>` with listed users on other shards.
    async fn counts(&self, user: u32, list: &ListRef) -> Result<Option<Vec<u8>>, Fail> {
        let ListRef::Inline(list) = list else {
            return Err(Fail::Reply(Bytes::from_static(
                b"CLIENT_ERROR temp list not resolved\r\n",
            )));
        };
        bump(&self.cluster.stats.fanout_requests);
        let home = self.shard(user);
        let tag = self.shared.next_tag();
        let mut bytes = Vec::new();
        self.temp(&mut bytes, &tag, list);
        encode::get(&mut bytes, [format!("friends{user}")]);
        let key = GetKey::CommonCounts {
            user,
            list: ListRef::Temp(tag),
        }
        .to_bytes();
        encode::get(&mut bytes, [&key]);
        let frames = self.call(home, bytes, 3).await?;
        self.check_stored(&frames[..1])?;
        let friends = ids(one_value(&frames[1])?);
        let Some(vector) = one_value(&frames[2])? else {
            return Ok(None);
        };
        let Ok(mut vector) = CountedList::parse(&vector) else {
            return Ok(Some(vector));
        };
        // The -1 entries, grouped by shard.
        let mut remote: std::collections::BTreeMap<u32, Vec<(usize, u32)>> = Default::default();
        for (at, (id, count)) in list.iter().zip(&vector.items).enumerate() {
            if *count == -1 && self.shard(*id) != home {
                remote.entry(self.shard(*id)).or_default().push((at, *id));
            }
        }
        let asks = remote.iter().map(|(shard, entries)| {
            let candidates: Vec<u32> = entries.iter().map(|(_, id)| *id).collect();
            let friends = &friends;
            async move { self.shared_counts(*shard, friends, &candidates).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        for ((_, entries), answer) in remote.iter().zip(answers) {
            for ((at, _), count) in entries.iter().zip(answer?) {
                vector.items[*at] = i64::try_from(count).unwrap_or(i64::MAX);
            }
        }
        let mut out = Vec::new();
        vector.encode(&mut out);
        Ok(Some(out))
    }

    /// `viewer~owner:keys` with the viewer on another shard.
    async fn check(
        &self,
        get: &GetKey<'_>,
        viewer: u32,
        owner: u32,
    ) -> Result<Option<Vec<u8>>, Fail> {
        let Some(answer) = self.on_shard(get, self.shard(owner)).await? else {
            return Ok(None);
        };
        if !answer.iter().any(|c| *c == b'1' || *c == b'2') {
            return Ok(Some(answer));
        }
        bump(&self.cluster.stats.privacy_resolved);
        let friends = self.friends_of(owner).await?;
        let common = if friends.is_empty() {
            0
        } else {
            self.shared_counts(self.shard(viewer), &friends, &[viewer])
                .await?[0]
        };
        let resolved = answer
            .iter()
            .map(|c| match (*c, common > 0) {
                (b'1', true) | (b'2', false) => b'3',
                (b'1', false) | (b'2', true) => b'0',
                (other, _) => other,
            })
            .collect();
        Ok(Some(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_lists_read_as_ids() {
        let packed = |ids: &[u32]| -> Vec<u8> {
            let mut out = u32::try_from(ids.len()).unwrap().to_le_bytes().to_vec();
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
            out
        };
        for ids in [&[][..], &[7], &[1, 255, 256, 65_536, u32::MAX]] {
            assert_eq!(packed_ids(Some(packed(ids))).ok(), Some(ids.to_vec()));
        }
        assert_eq!(packed_ids(None).ok(), Some(Vec::new()));
        for odd in [&b""[..], b"\0\0\0", b"\x01\0\0\0\x07\0\0"] {
            let Err(Fail::Reply(line)) = packed_ids(Some(odd.to_vec())) else {
                panic!("{odd:?} read as ids");
            };
            assert!(line.starts_with(b"SERVER_ERROR "), "{line:?}");
        }
    }

    #[test]
    fn intersections_keep_common_ids_ascending() {
        for round in 0..500 {
            let max = [10u32, 1000, 100_000, u32::MAX][round % 4];
            let pick = |n: usize| {
                let mut v: Vec<u32> = (0..n).map(|_| rand::random::<u32>() % max).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let (a, b) = (pick(round % 50), pick(round % 70));
            let common: Vec<u32> = a.iter().copied().filter(|x| b.contains(x)).collect();
            assert_eq!(intersection(&a, &b), common, "{a:?} {b:?}");
        }
    }
}
