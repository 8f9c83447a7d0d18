//! Lists keys the proxy answers itself; every other lists key goes to its list's shard
//! unchanged (`route::read`).
//!
//! * `intersect…:-<tag>` / `subtract…:-<tag>`: the client's temp list lives in the proxy
//!   (`set temp<tag>` on a proxy connection is kept there, as for friends); it travels to the
//!   list's shard as `set temp<unique tag>` in the same call as the rewritten get.
//! * `object_lists<obj>[#limit[,offset]]`: every shard is asked for its first
//!   `offset + limit` lists holding the object (each list lives on one shard, so the shards'
//!   answers are disjoint); the totals add up, the ids merge ascending, then the slice is cut.
//!   A shard that does not answer in time contributes nothing and the answer counts as partial
//!   (`#last_complete_count`).
//! * `delete object<obj>`: every shard's primary; `DELETED` when any shard deleted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koshka_keys::idiom::{push_int, push_uint, CountedList};
use koshka_keys::lists::{encode_ids, GetKey, ListRef, REPLY_ITEMS_MAX};
use koshka_keys::Encode;
use koshka_proto::encode;
use tokio::time::Instant;

use crate::backend::{CallError, Frames};
use crate::cluster::Cluster;
use crate::conn::{server_error, Outcome, Part, PartFuture, Session};
use crate::scatter::first_value;
use crate::stats::bump;
use crate::Shared;

/// Most lists `object_lists` may reach through the proxy (`offset + limit`): every shard is
/// asked for that many, and a node answers at most [`REPLY_ITEMS_MAX`].
pub const OBJECT_LISTS_WINDOW_MAX: u32 = REPLY_ITEMS_MAX;

fn error_part(text: String) -> PartFuture {
    Box::pin(std::future::ready(Part::Error(
        format!("CLIENT_ERROR {text}\r\n").into(),
    )))
}

/// Answers `get` (a temp-list intersection on `shard`, or `object_lists` on every shard when
/// `shard` is `None`).
pub fn read(
    cluster: Arc<Cluster>,
    shared: &Shared,
    key: Vec<u8>,
    get: GetKey,
    shard: Option<u32>,
    session: &Session,
) -> PartFuture {
    let affinity = session.id;
    let deadline = Instant::now() + Duration::from_millis(cluster.settings.get_timeout_ms);
    match (get, shard) {
        (
            GetKey::Intersect {
                select,
                ids: ListRef::Temp(tag),
                subtract,
            },
            Some(shard),
        ) => {
            // Resolve the client's list now: the session is not shared with the task.
            let Some(ids) = session.object_temp(&tag) else {
                return error_part(format!("no temp list {tag} on this connection"));
            };
            let ours = shared.next_tag();
            let mut value = Vec::with_capacity(ids.len() * 8);
            encode_ids(&mut value, ids);
            let mut bytes = Vec::with_capacity(value.len() + 128);
            encode::set(&mut bytes, format!("temp{ours}").as_bytes(), &value);
            let get = GetKey::Intersect {
                select,
                ids: ListRef::Temp(ours),
                subtract,
            };
            encode::get(&mut bytes, [get.to_bytes()]);
            Box::pin(async move {
                // The node names the rewritten key: the reply names the client's.
                let frame = match on_shard(&cluster, shard, bytes, 2, affinity, deadline).await {
                    Ok(frame) => frame,
                    Err(part) => return part,
                };
                match first_value(&frame) {
                    Ok(Some(text)) => {
                        let mut out = Vec::with_capacity(text.len() + key.len() + 32);
                        koshka_proto::reply::value(&mut out, &key, 0, &text, None);
                        Part::Values(out.into(), 1)
                    }
                    Ok(None) => Part::Values(Bytes::new(), 0),
                    Err(line) => Part::Error(line),
                }
            })
        }
        (
            GetKey::ObjectLists {
                object,
                limit,
                offset,
            },
            None,
        ) => {
            let window = offset.saturating_add(limit);
            if limit > 0 && window > OBJECT_LISTS_WINDOW_MAX {
                return error_part(format!(
                    "object_lists through the proxy: offset + limit must be at most \
                     {OBJECT_LISTS_WINDOW_MAX}"
                ));
            }
            let per_shard = GetKey::ObjectLists {
                object,
                limit: window.min(OBJECT_LISTS_WINDOW_MAX),
                offset: 0,
            };
            let mut bytes = Vec::new();
            encode::get(&mut bytes, [per_shard.to_bytes()]);
            Box::pin(object_lists(
                cluster,
                key,
                Bytes::from(bytes),
                (limit, offset),
                affinity,
                deadline,
            ))
        }
        // Routing sends nothing else here; the shard of the key's list answers it.
        (get, shard) => {
            let mut bytes = Vec::new();
            encode::get(&mut bytes, [get.to_bytes()]);
            let shard = shard.unwrap_or(0);
            Box::pin(async move {
                match on_shard(&cluster, shard, bytes, 1, affinity, deadline).await {
                    Ok(frame) => crate::conn::values_part(frame),
                    Err(part) => part,
                }
            })
        }
    }
}

/// One call of `frames_wanted` commands to `shard`, the last a one-key get (the earlier ones
/// must answer `STORED`): the get's frame, or the part to answer instead.
async fn on_shard(
    cluster: &Cluster,
    shard: u32,
    bytes: Vec<u8>,
    frames_wanted: usize,
    affinity: usize,
    deadline: Instant,
) -> Result<Bytes, Part> {
    match ask(
        cluster,
        shard,
        Bytes::from(bytes),
        frames_wanted,
        affinity,
        deadline,
    )
    .await
    {
        Ok(frames) => {
            if let Some(bad) = frames[..frames.len() - 1]
                .iter()
                .find(|f| f.as_ref() != b"STORED\r\n")
            {
                return Err(Part::Error(bad.clone()));
            }
            Ok(frames[frames.len() - 1].clone())
        }
        Err(e) => Err(missed(cluster, &e)),
    }
}

/// `bytes` (`frames` commands) to a member of `shard` that serves reads.
async fn ask(
    cluster: &Cluster,
    shard: u32,
    bytes: Bytes,
    frames: usize,
    affinity: usize,
    deadline: Instant,
) -> Result<Frames, CallError> {
    let member = cluster.reader(shard)?;
    member.call(bytes, frames, affinity, deadline).await
}

fn missed(cluster: &Cluster, e: &CallError) -> Part {
    match e {
        CallError::Timeout { .. } => bump(&cluster.stats.shard_timeouts),
        _ => bump(&cluster.stats.shard_unavailable),
    }
    Part::Missed
}

/// `object_lists` over every shard: totals summed, ids merged ascending, then sliced.
async fn object_lists(
    cluster: Arc<Cluster>,
    key: Vec<u8>,
    bytes: Bytes,
    (limit, offset): (u32, u32),
    affinity: usize,
    deadline: Instant,
) -> Part {
    bump(&cluster.stats.scatter_gathers);
    bump(&cluster.stats.fanout_requests);
    let shards = cluster.count();
    let calls = (0..shards).map(|shard| ask(&cluster, shard, bytes.clone(), 1, affinity, deadline));
    let answers = futures_util::future::join_all(calls).await;
    let mut total: u64 = 0;
    let mut lists: Vec<i64> = Vec::new();
    let mut done = 0;
    for answer in answers {
        let frames = match answer {
            Ok(frames) => frames,
            Err(e) => {
                missed(&cluster, &e);
                continue;
            }
        };
        match frames.first().map(first_value) {
            Some(Ok(value)) => {
                let Some(list) = value.as_deref().map(CountedList::parse).transpose().ok() else {
                    bump(&cluster.stats.shard_unavailable);
                    continue;
                };
                if let Some(list) = list {
                    total += list.total;
                    lists.extend(list.items);
                }
                done += 1;
            }
            Some(Err(line)) => return Part::Error(line),
            None => {
                bump(&cluster.stats.shard_unavailable);
            }
        }
    }
    if done < shards {
        bump(&cluster.stats.partial_answers);
    }
    lists.sort_unstable();
    let mut text = Vec::with_capacity(16 + lists.len() * 8);
    push_uint(&mut text, total);
    for id in lists.iter().skip(offset as usize).take(limit as usize) {
        text.push(b',');
        push_int(&mut text, *id);
    }
    let mut out = Vec::with_capacity(text.len() + key.len() + 32);
    koshka_proto::reply::value(&mut out, &key, 0, &text, None);
    Part::Merged {
        values: out.into(),
        count: 1,
        done,
        total: shards,
    }
}

/// `delete object<obj>` (the client's command, `bytes` with a reply asked for) on every shard's
/// primary: `DELETED` when any shard deleted, `NOT_FOUND` when none had the object; a shard's
/// error line, or a `SERVER_ERROR` for a shard that could not be asked, wins. The feed cache's
/// follow lists are invalidated whatever the outcome (a timed-out delete may have landed).
pub async fn delete_object(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    bytes: Bytes,
    affinity: usize,
    deadline: Instant,
) -> Outcome {
    let calls = (0..cluster.count()).map(|shard| {
        let bytes = bytes.clone();
        let cluster = &cluster;
        async move {
            match cluster.writer(shard) {
                Ok(member) => member.call(bytes, 1, affinity, deadline).await,
                Err(e) => Err(e),
            }
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    if shared.feed_cache.watches(cluster.family()) {
        shared.feed_cache.invalidate_every(cluster.family());
        bump(&cluster.stats.feed_cache_invalidations);
    }
    let mut deleted = false;
    let mut first_error: Option<Vec<u8>> = None;
    for answer in answers {
        match answer {
            Ok(frames) => match frames.first().map(Bytes::as_ref) {
                Some(b"DELETED\r\n") => deleted = true,
                Some(b"NOT_FOUND\r\n") => {}
                other => {
                    first_error.get_or_insert_with(|| other.unwrap_or_default().to_vec());
                }
            },
            Err(e) => {
                bump(&cluster.stats.server_errors);
                first_error.get_or_insert_with(|| server_error(&e));
            }
        }
    }
    Outcome::reply(first_error.unwrap_or_else(|| {
        if deleted {
            b"DELETED\r\n".to_vec()
        } else {
            b"NOT_FOUND\r\n".to_vec()
        }
    }))
}
