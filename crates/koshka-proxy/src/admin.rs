//! Admin keys (`get #…`) and the `stats` command.
//!
//! | key | value |
//! | --- | --- |
//! | `#last_complete_count` | sub-requests of this connection's previous retrieval that answered in time (VK's key) |
//! | `#last_fanout` | sub-requests that retrieval sent |
//! | `#calc#<key>` | `shard <n> <reader address> <primary address>`: where `<key>` goes |
//! | `#targets` | one line per member: `shard role address state unreliability timeouts` |
//! | `#stats` | the cluster's `proxy_*` counters, `name value` per line |

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use koshka_proto::{parse_reply, ParsedReply, Reply};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::conn::Session;
use crate::route::{self, ReadPlan};
use crate::Shared;

/// The `VALUE` block answering an admin or session key (empty for a miss).
#[must_use]
pub fn session_value(cluster: &Cluster, session: &Session, key: &[u8]) -> Vec<u8> {
    let text = match route::read(cluster, key) {
        ReadPlan::NewId { owner, tag } => session.new_id(owner, &tag).map(|lid| lid.to_string()),
        ReadPlan::Admin => admin_text(cluster, session, key),
        _ => None,
    };
    let mut out = Vec::new();
    if let Some(text) = text {
        koshka_proto::reply::value(&mut out, key, 0, text.as_bytes(), None);
    }
    out
}

/// [`session_value`] for a key met inside a larger retrieval.
#[must_use]
pub fn local_value(cluster: &Cluster, _shared: &Shared, session: &Session, key: &[u8]) -> Vec<u8> {
    session_value(cluster, session, key)
}

fn admin_text(cluster: &Cluster, session: &Session, key: &[u8]) -> Option<String> {
    if let Some(target) = key.strip_prefix(b"#calc#") {
        return Some(calc(cluster, target));
    }
    match key {
        b"#last_complete_count" => Some(session.last_complete.to_string()),
        b"#last_fanout" => Some(session.last_fanout.to_string()),
        b"#targets" => Some(targets(cluster)),
        b"#stats" => Some(
            cluster
                .stats
                .snapshot()
                .iter()
                .map(|(name, value)| format!("{name} {value}\n"))
                .collect(),
        ),
        _ => None,
    }
}

fn calc(cluster: &Cluster, key: &[u8]) -> String {
    let shard = match route::read(cluster, key) {
        ReadPlan::Shard(shard)
        | ReadPlan::Pinned { shard, .. }
        | ReadPlan::Lists {
            shard: Some(shard), ..
        } => shard,
        _ => match route::write(cluster, koshka_keys::Verb::Set, key, b"") {
            route::WritePlan::Shard(shard) => shard,
            _ => cluster.shard_of_plain(key),
        },
    };
    let primary = &cluster.shards[shard as usize].members[0].addr;
    let reader = cluster
        .reader(shard)
        .map_or_else(|_| "-".to_string(), |m| m.addr.clone());
    format!("shard {shard} {reader} {primary}")
}

fn targets(cluster: &Cluster) -> String {
    let mut out = String::new();
    for shard in &cluster.shards {
        for (i, member) in shard.members.iter().enumerate() {
            let h = &member.health;
            out.push_str(&format!(
                "{} {} {} {} {} {} {}\n",
                shard.index,
                if i == 0 { "primary" } else { "replica" },
                member.addr,
                if member.usable() { "ready" } else { "failed" },
                h.unreliability.load(Ordering::Relaxed),
                h.timeouts.load(Ordering::Relaxed),
                member.live_connections(),
            ));
        }
    }
    out
}

/// Stats the proxy answers itself rather than summing over shards.
const OWN_STATS: [&str; 4] = ["pid", "uptime", "time", "version"];

/// The `stats [group]` reply: every shard's numeric values summed (others from the first
/// shard that has them), the proxy's own `pid`/`uptime`/`time`/`version`, then for the
/// general group and `stats proxy` the cluster's counters and backend health.
pub async fn stats(
    cluster: &Cluster,
    shared: &Shared,
    group: &[u8],
    deadline: Instant,
    affinity: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    let general = group.is_empty();
    if group != b"proxy" {
        let mut request = Vec::new();
        koshka_proto::encode::stats(&mut request, group);
        let request = Bytes::from(request);
        let mut calls = Vec::new();
        for shard in 0..cluster.count() {
            if let Ok(member) = cluster.reader(shard) {
                if let Ok(reply) = member.submit(request.clone(), 1, affinity) {
                    calls.push((member.clone(), reply));
                }
            }
        }
        let mut merged: Vec<(String, String)> = Vec::new();
        for (member, reply) in calls {
            let Ok(frames) = member.wait(reply, deadline).await else {
                continue;
            };
            let frame = frames.into_iter().next().unwrap_or_default();
            match parse_reply(&frame, &koshka_proto::ReplyConfig::DEFAULT) {
                ParsedReply::Done {
                    reply: Reply::Stats(stats),
                    ..
                } => {
                    for (name, value) in stats.iter() {
                        merge_stat(&mut merged, name, value);
                    }
                }
                ParsedReply::Done { .. } if merged.is_empty() => return frame.to_vec(),
                _ => {}
            }
        }
        for (name, value) in merged {
            let own = own_stat(shared, &name);
            koshka_proto::reply::stat(&mut out, &name, own.as_deref().unwrap_or(&value));
        }
    }
    if general || group == b"proxy" {
        for (name, value) in cluster.stats.snapshot() {
            koshka_proto::reply::stat(&mut out, name, &value.to_string());
        }
        let members: Vec<_> = cluster.members().collect();
        let failed = members.iter().filter(|m| !m.usable()).count();
        koshka_proto::reply::stat(&mut out, "proxy_cluster", &cluster.config.name);
        koshka_proto::reply::stat(&mut out, "proxy_shards", &cluster.count().to_string());
        koshka_proto::reply::stat(&mut out, "proxy_backends", &members.len().to_string());
        koshka_proto::reply::stat(&mut out, "proxy_backends_failed", &failed.to_string());
        koshka_proto::reply::stat(&mut out, "proxy_config", &shared.config_text());
        if !general {
            koshka_proto::reply::stat(
                &mut out,
                "uptime",
                &shared.started.elapsed().as_secs().to_string(),
            );
        }
    }
    out.extend_from_slice(koshka_proto::reply::END);
    out
}

fn own_stat(shared: &Shared, name: &str) -> Option<String> {
    if !OWN_STATS.contains(&name) {
        return None;
    }
    Some(match name {
        "pid" => std::process::id().to_string(),
        "uptime" => shared.started.elapsed().as_secs().to_string(),
        "time" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            .to_string(),
        _ => koshka_proto::VERSION.to_string(),
    })
}

fn merge_stat(merged: &mut Vec<(String, String)>, name: &[u8], value: &[u8]) {
    let name = String::from_utf8_lossy(name).into_owned();
    let value = String::from_utf8_lossy(value).into_owned();
    match merged.iter_mut().find(|(n, _)| *n == name) {
        Some((_, existing)) => {
            if let (Ok(a), Ok(b)) = (existing.parse::<u64>(), value.parse::<u64>()) {
                *existing = (a.saturating_add(b)).to_string();
            }
        }
        None => merged.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_stats_add_up() {
        let mut merged = Vec::new();
        merge_stat(&mut merged, b"curr_items", b"3");
        merge_stat(&mut merged, b"curr_items", b"4");
        merge_stat(&mut merged, b"libevent", b"x");
        merge_stat(&mut merged, b"libevent", b"y");
        assert_eq!(
            merged,
            vec![
                ("curr_items".to_string(), "7".to_string()),
                ("libevent".to_string(), "x".to_string())
            ]
        );
    }
}
