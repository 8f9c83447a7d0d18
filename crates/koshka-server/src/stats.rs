//! Node counters. Each is declared once, with its description, in [`counters!`], so the
//! struct, the `stats` output and `--list-stats` cannot drift apart. Every worker thread
//! owns one [`Counters`] (uncontended atomics); `stats` sums them.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $description:literal,)*) => {
        /// Per-thread counters; see [`Counters::DESCRIPTIONS`].
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $description] pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Every counter name with its description, in output order.
            pub const DESCRIPTIONS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($name), $description),)*];

            /// Current values in [`Counters::DESCRIPTIONS`] order.
            #[must_use]
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$name.load(Ordering::Relaxed),)*]
            }

            /// Sets every counter to zero (`stats reset`).
            pub fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    total_connections: "connections accepted since start",
    rejected_connections: "connections refused at max_connections",
    cmd_get: "keys requested by get, gets, gat, gats and mg",
    cmd_set: "store commands (set, add, replace, append, prepend, cas, ms)",
    cmd_flush: "flush_all commands",
    cmd_touch: "touch, gat, gats and mg with T",
    get_hits: "keys found by retrieval commands",
    get_misses: "keys not found by retrieval commands",
    delete_hits: "deletes that removed an item",
    delete_misses: "deletes of missing keys",
    incr_hits: "incr of existing items",
    incr_misses: "incr of missing keys",
    decr_hits: "decr of existing items",
    decr_misses: "decr of missing keys",
    cas_hits: "cas commands that stored",
    cas_misses: "cas commands on missing keys",
    cas_badval: "cas commands whose unique did not match",
    touch_hits: "touches of existing items",
    touch_misses: "touches of missing keys",
    bytes_read: "bytes read from clients",
    bytes_written: "bytes written to clients",
    protocol_errors: "requests answered ERROR, CLIENT_ERROR or SERVER_ERROR",
    output_buffer_overflows: "connections dropped because their reply buffer stayed full",
    line_too_long: "connections closed for a command line over its limit or an HTTP request",
    engine_errors: "engine requests that failed (bad compiled key, wrong shard, …)",
}

/// Adds `n` to a counter.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Sums every thread's counters, in [`Counters::DESCRIPTIONS`] order.
#[must_use]
pub fn sum(all: &[std::sync::Arc<Counters>]) -> Vec<(&'static str, u64)> {
    let mut totals = vec![0u64; Counters::DESCRIPTIONS.len()];
    for counters in all {
        for (total, value) in totals.iter_mut().zip(counters.values()) {
            *total += value;
        }
    }
    Counters::DESCRIPTIONS
        .iter()
        .map(|(name, _)| *name)
        .zip(totals)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_duplicate_names() {
        let mut names: Vec<_> = Counters::DESCRIPTIONS.iter().map(|(n, _)| *n).collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before, "a counter name is declared twice");
    }

    #[test]
    fn reset_zeroes_every_counter() {
        let counters = Counters::default();
        bump(&counters.cmd_get, 2);
        bump(&counters.engine_errors, 1);
        counters.reset();
        assert!(counters.values().iter().all(|v| *v == 0));
    }

    #[test]
    fn sums_threads() {
        let a = std::sync::Arc::new(Counters::default());
        let b = std::sync::Arc::new(Counters::default());
        bump(&a.cmd_get, 2);
        bump(&b.cmd_get, 3);
        let totals = sum(&[a, b]);
        assert!(totals.contains(&("cmd_get", 5)));
    }
}
