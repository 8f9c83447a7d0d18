//! The `stats` command: general statistics (memcached's names, then the node's counters, the
//! engine's and its log's), `stats settings`, `stats snapshot` (starts one),
//! `stats promote` (a replica becomes a primary) and `stats reset`.

use koshka_proto::reply;

use crate::{EngineSlot, Node};

/// Answers `stats [group]` for the engine behind `slot`.
pub(crate) fn stats(node: &Node, slot: &EngineSlot, group: &[u8], out: &mut Vec<u8>) {
    match group {
        b"" => general_stats(node, slot, out),
        b"settings" => settings_stats(node, slot, out),
        b"snapshot" => {
            let status = slot.persistence.request_snapshot();
            reply::stat(out, "snapshot", &status.replace(['\r', '\n'], " "));
        }
        b"promote" => {
            let status = slot
                .persistence
                .promote()
                .unwrap_or_else(|e| format!("refused: {e}"));
            reply::stat(out, "promote", &status.replace(['\r', '\n'], " "));
        }
        b"reset" => {
            crate::stats_groups::reset(node, slot);
            out.extend_from_slice(reply::RESET);
            return;
        }
        _ => {
            if !crate::stats_groups::render(node, slot, group, out) {
                out.extend_from_slice(reply::ERROR);
            }
            return;
        }
    }
    out.extend_from_slice(reply::END);
}

fn general_stats(node: &Node, slot: &EngineSlot, out: &mut Vec<u8>) {
    let now = koshka_engine::unix_now();
    let (user, system) = rusage();
    let lines: Vec<(&str, String)> = vec![
        ("pid", std::process::id().to_string()),
        ("uptime", node.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", koshka_proto::VERSION.to_string()),
        ("libevent", "tokio".to_string()),
        (
            "pointer_size",
            (8 * std::mem::size_of::<usize>()).to_string(),
        ),
        ("rusage_user", user),
        ("rusage_system", system),
        (
            "max_connections",
            node.config.server.max_connections.to_string(),
        ),
        ("curr_connections", node.connection_count().to_string()),
        ("output_budget_bytes", node.output_budget.max().to_string()),
        (
            "output_budget_held_bytes",
            node.output_budget.held().to_string(),
        ),
        (
            "output_budget_closed",
            node.output_budget.closed().to_string(),
        ),
        ("threads", node.config.threads().to_string()),
        ("engine", slot.name.clone()),
    ];
    for (name, value) in &lines {
        reply::stat(out, name, value);
    }
    for (name, value) in crate::stats::sum(&node.counters.snapshot()) {
        reply::stat(out, name, &value.to_string());
    }
    for (name, value) in slot.engine.stats() {
        reply::stat(out, &name, &value);
    }
    for (name, value) in slot.persistence.stats() {
        reply::stat(out, &name, &value);
    }
}

fn settings_stats(node: &Node, slot: &EngineSlot, out: &mut Vec<u8>) {
    let config = &node.config;
    let limits = config.limits();
    let lines: Vec<(&str, String)> = vec![
        ("maxbytes", config.storage.memory_limit.0.to_string()),
        ("maxconns", config.server.max_connections.to_string()),
        ("tcpport", slot.listen.port().to_string()),
        ("interface", slot.listen.ip().to_string()),
        ("num_threads", config.threads().to_string()),
        ("item_size_max", limits.value_size_max.to_string()),
        ("key_len_max", slot.key_len_max.to_string()),
        ("line_len_max", koshka_limits::LINE_LEN_MAX.to_string()),
        (
            "multiget_keys_max",
            koshka_limits::MULTIGET_KEYS_MAX.to_string(),
        ),
        ("output_buffer_max", limits.output_buffer_max.to_string()),
        (
            "evictions",
            if config.storage.kv_mode == crate::config::KvMode::Cache {
                "on"
            } else {
                "off"
            }
            .to_string(),
        ),
        ("cas_enabled", "yes".to_string()),
        ("data_dir", config.storage.data_dir.display().to_string()),
        (
            "durability",
            format!("{:?}", config.storage.durability).to_lowercase(),
        ),
        (
            "binlog_segment_size",
            limits.binlog_segment_size.to_string(),
        ),
        ("snapshot_log_bytes", limits.snapshot_log_bytes.to_string()),
        ("shard_index", config.engines.shard_index.to_string()),
        ("shard_count", config.engines.shard_count.to_string()),
    ];
    for (name, value) in &lines {
        reply::stat(out, name, value);
    }
}

fn rusage() -> (String, String) {
    let usage = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (1-based) are utime and stime in clock ticks, after the ")" of comm.
    let fields: Vec<&str> = usage
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (format!("{:.6}", ticks(11)), format!("{:.6}", ticks(12)))
}
