//! The memcached stats groups of the kv engine — `stats slabs`, `stats items`, `stats sizes` —
//! as `STAT` lines with koshka's own figures. koshka has no slab allocator: every item is one
//! allocation, counted in the memcached default size class that fits its real footprint
//! ([`crate::classes`]); the page figures say what memcached would hold for those items in
//! 1 MiB pages; fields for mechanisms koshka does not have (segmented LRU, item ages,
//! per-class command counters) read 0. docs/conformance.md lists every field.

use koshka_engine::Stat;

use crate::classes::{self, ClassStats};
use crate::Kv;

/// Bucket width of `stats sizes`, as in memcached.
const SIZES_BUCKET: usize = 32;

/// The lines of `stats <group>` for the groups this module knows.
pub(crate) fn group(kv: &Kv, name: &str) -> Option<Vec<Stat>> {
    let mut out = Vec::new();
    match name {
        "slabs" => slabs(Some(kv), &mut out),
        "items" => items(Some(kv), &mut out),
        "sizes" => sizes(Some(kv), &mut out),
        _ => return None,
    }
    Some(out)
}

/// A per-class field: its name and koshka's figure for it.
type Field = (&'static str, fn(&ClassStats) -> u64);

/// `stats slabs` per class, in memcached 1.6's order.
const SLAB_FIELDS: &[Field] = &[
    ("chunk_size", |c| c.chunk_size as u64),
    ("chunks_per_page", |c| c.chunks_per_page),
    ("total_pages", ClassStats::pages),
    ("total_chunks", |c| c.pages() * c.chunks_per_page),
    ("used_chunks", |c| c.counts.chunks),
    ("free_chunks", |c| {
        c.pages() * c.chunks_per_page - c.counts.chunks
    }),
    ("free_chunks_end", |_| 0),
    // koshka counts commands per node (general `stats`), not per class.
    ("get_hits", |_| 0),
    ("cmd_set", |_| 0),
    ("delete_hits", |_| 0),
    ("incr_hits", |_| 0),
    ("decr_hits", |_| 0),
    ("cas_hits", |_| 0),
    ("cas_badval", |_| 0),
    ("touch_hits", |_| 0),
];

/// `stats items` per class, in memcached 1.6's order. One CLOCK per partition and no item
/// timestamps: every item is "cold", ages and LRU movements are 0.
const ITEM_FIELDS: &[Field] = &[
    ("number", |c| c.counts.items),
    ("number_hot", |_| 0),
    ("number_warm", |_| 0),
    ("number_cold", |c| c.counts.items),
    ("age_hot", |_| 0),
    ("age_warm", |_| 0),
    ("age", |_| 0),
    ("mem_requested", |c| c.counts.bytes),
    ("evicted", |c| c.counts.evicted),
    ("evicted_nonzero", |c| c.counts.evicted_nonzero),
    ("evicted_time", |_| 0),
    ("outofmemory", |c| c.counts.outofmemory),
    ("tailrepairs", |_| 0),
    ("reclaimed", |c| c.counts.reclaimed),
    ("expired_unfetched", |_| 0),
    ("evicted_unfetched", |_| 0),
    ("evicted_active", |_| 0),
    ("crawler_reclaimed", |c| c.counts.crawler_reclaimed),
    ("crawler_items_checked", |_| 0),
    ("lrutail_reflocked", |_| 0),
    ("moves_to_cold", |_| 0),
    ("moves_to_warm", |_| 0),
    ("moves_within_lru", |_| 0),
    ("direct_reclaims", |_| 0),
    ("hits_to_hot", |_| 0),
    ("hits_to_warm", |_| 0),
    ("hits_to_cold", |_| 0),
    ("hits_to_temp", |_| 0),
];

fn stat_number(out: &mut Vec<Stat>, name: &str, value: u64) {
    out.push((name.to_string(), value.to_string()));
}

/// Appends `STAT <prefix><name> <value>` for every field.
fn class_lines(out: &mut Vec<Stat>, prefix: &str, class: &ClassStats, fields: &[Field]) {
    for (name, value) in fields {
        stat_number(out, &format!("{prefix}{name}"), value(class));
    }
}

/// Classes holding items, as memcached lists only classes with pages.
fn occupied(kv: Option<&Kv>) -> Vec<ClassStats> {
    kv.map(Kv::class_stats)
        .unwrap_or_default()
        .into_iter()
        .filter(|class| class.counts.items > 0)
        .collect()
}

fn slabs(kv: Option<&Kv>, out: &mut Vec<Stat>) {
    let classes = occupied(kv);
    for class in &classes {
        class_lines(out, &format!("{}:", class.id), class, SLAB_FIELDS);
    }
    let pages: u64 = classes.iter().map(ClassStats::pages).sum();
    stat_number(out, "active_slabs", classes.len() as u64);
    stat_number(out, "total_malloced", pages * classes::PAGE_SIZE as u64);
}

fn items(kv: Option<&Kv>, out: &mut Vec<Stat>) {
    for class in &occupied(kv) {
        class_lines(out, &format!("items:{}:", class.id), class, ITEM_FIELDS);
    }
}

/// `stats sizes`: items by footprint in 32-byte buckets. memcached keeps this histogram only
/// after `stats sizes_enable`; koshka walks the items when asked (one partition lock at a time).
fn sizes(kv: Option<&Kv>, out: &mut Vec<Stat>) {
    for (size, count) in kv
        .map(|kv| kv.size_histogram(SIZES_BUCKET))
        .unwrap_or_default()
    {
        stat_number(out, &size.to_string(), count);
    }
}

#[cfg(test)]
mod tests {
    use koshka_engine::{MemoryJournal, StoreMode};

    use super::*;

    fn text(lines: &[Stat]) -> String {
        lines
            .iter()
            .map(|(name, value)| format!("STAT {name} {value}\r\n"))
            .collect()
    }

    #[test]
    fn class_groups_render_only_occupied_classes() {
        let kv = Kv::new(crate::KvConfig::default());
        let journal = MemoryJournal::default();
        let slabs_of = |kv: &Kv| text(&group(kv, "slabs").unwrap());
        assert_eq!(
            slabs_of(&kv),
            "STAT active_slabs 0\r\nSTAT total_malloced 0\r\n"
        );
        let mode = StoreMode::Set;
        kv.store(mode, b"issue29", 0, 0, 0, b"", &journal).unwrap();
        kv.store(mode, b"big", 0, 0, 0, &[0; 66_560], &journal)
            .unwrap();
        let slabs = slabs_of(&kv);
        for line in [
            "STAT 1:chunk_size 96\r\n",
            "STAT 1:used_chunks 1\r\n",
            "STAT 1:free_chunks 10921\r\n",
            "STAT 31:chunk_size 82792\r\n",
            "STAT 31:cmd_set 0\r\n",
            "STAT active_slabs 2\r\nSTAT total_malloced 2097152\r\n",
        ] {
            assert!(slabs.contains(line), "{line:?} not in {slabs}");
        }
        let items = text(&group(&kv, "items").unwrap());
        assert!(items.starts_with("STAT items:1:number 1\r\n"), "{items}");
        assert!(items.contains("STAT items:31:mem_requested 66608\r\n"));
        assert_eq!(items.matches("STAT items:31:").count(), ITEM_FIELDS.len());
        assert_eq!(
            text(&group(&kv, "sizes").unwrap()),
            "STAT 64 1\r\nSTAT 66624 1\r\n"
        );
        assert!(group(&kv, "nonsense").is_none());
    }
}
