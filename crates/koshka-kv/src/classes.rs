//! memcached's default slab classes, used to report koshka's items the way memcached tools
//! expect (`stats slabs`, `stats items`).
//!
//! koshka allocates every item separately ([`crate::item`]); it has no slabs, pages or chunks.
//! To answer in memcached's format with koshka's own figures, each item is counted in the
//! class memcached would have put an item of the same footprint in, with memcached's default
//! settings: chunks from 96 bytes growing by a factor of 1.25 (aligned to 8 bytes) up to half
//! a 1 MiB page, 39 classes. An item larger than the largest chunk counts one largest chunk per
//! 512 KiB, as memcached chains large items out of such chunks.
//!
//! This module only classifies; the counts live in each partition (see `Usage` in the crate
//! root), and the server renders them.

/// memcached's slab page size (`-I`'s default, 1 MiB); pages only exist in the report.
pub const PAGE_SIZE: usize = 1024 * 1024;

/// memcached's smallest chunk: a 48-byte item header plus `-n 48` bytes of data.
pub const CHUNK_SIZE_MIN: usize = 96;

/// memcached's largest chunk (`slab_chunk_max`, half a page); larger items are chained.
pub const CHUNK_SIZE_MAX: usize = PAGE_SIZE / 2;

/// memcached aligns chunk sizes to 8 bytes.
const CHUNK_ALIGN: usize = 8;

/// Number of classes with memcached's defaults (growth factor 1.25).
pub const CLASSES: usize = class_sizes().1;

/// Chunk size of each class; class id `i + 1` has size `CHUNK_SIZES[i]` (memcached numbers
/// classes from 1).
pub const CHUNK_SIZES: [usize; CLASSES] = {
    let (sizes, count) = class_sizes();
    let mut out = [0; CLASSES];
    let mut i = 0;
    while i < count {
        out[i] = sizes[i];
        i += 1;
    }
    out
};

/// Upper bound on the class count while the table is computed.
const CLASSES_BOUND: usize = 64;

/// memcached's `slabs_init` with the default factor 1.25, in integer arithmetic (`size * 5 / 4`
/// truncates exactly as memcached's `size *= factor` on an unsigned int): sizes grow until the
/// next one would reach `CHUNK_SIZE_MAX / 1.25`, then the last class is `CHUNK_SIZE_MAX`.
const fn class_sizes() -> ([usize; CLASSES_BOUND], usize) {
    let mut sizes = [0; CLASSES_BOUND];
    let mut size = CHUNK_SIZE_MIN;
    let mut count = 0;
    // `size >= CHUNK_SIZE_MAX / 1.25` ⇔ `size * 5 >= CHUNK_SIZE_MAX * 4`.
    while size * 5 < CHUNK_SIZE_MAX * 4 {
        size = size.next_multiple_of(CHUNK_ALIGN);
        sizes[count] = size;
        count += 1;
        size = size * 5 / 4;
    }
    sizes[count] = CHUNK_SIZE_MAX;
    (sizes, count + 1)
}

const _: () = assert!(
    CLASSES == koshka_limits::MEMCACHED_SLAB_CLASSES,
    "memcached 1.6 reports 39 classes with its defaults"
);
const _: () = assert!(CHUNK_SIZES[0] == CHUNK_SIZE_MIN);
const _: () = assert!(CHUNK_SIZES[CLASSES - 1] == CHUNK_SIZE_MAX);

/// Index (0-based; the class id is one more) of the class an item of `footprint` bytes counts
/// in: the smallest chunk that holds it, or the largest class.
#[must_use]
pub fn class_index(footprint: usize) -> usize {
    CHUNK_SIZES
        .partition_point(|size| *size < footprint)
        .min(CLASSES - 1)
}

/// Chunks an item of `footprint` bytes takes in its class: one, or one largest chunk per
/// [`CHUNK_SIZE_MAX`] bytes for a chained large item.
#[must_use]
pub fn chunks_of(footprint: usize) -> u64 {
    if footprint <= CHUNK_SIZE_MAX {
        1
    } else {
        footprint.div_ceil(CHUNK_SIZE_MAX) as u64
    }
}

/// Chunks of class `index` in one page.
#[must_use]
pub fn chunks_per_page(index: usize) -> u64 {
    (PAGE_SIZE / CHUNK_SIZES[index]) as u64
}

/// Counts of one class in one partition, kept under the partition lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Items in the class now.
    pub items: u64,
    /// Their footprint in bytes (`mem_requested`).
    pub bytes: u64,
    /// Chunks they would take (one per item, more for chained large items).
    pub chunks: u64,
    /// Items evicted to make room (cache mode).
    pub evicted: u64,
    /// Of those, items that had an expiry time.
    pub evicted_nonzero: u64,
    /// Expired or flushed items whose memory was freed, by the access that found them or by
    /// the background sweep.
    pub reclaimed: u64,
    /// Of those, items the background sweep freed.
    pub crawler_reclaimed: u64,
    /// Stores of an item of this size refused for lack of memory.
    pub outofmemory: u64,
}

impl ClassCounts {
    /// All zero.
    pub const ZERO: Self = Self {
        items: 0,
        bytes: 0,
        chunks: 0,
        evicted: 0,
        evicted_nonzero: 0,
        reclaimed: 0,
        crawler_reclaimed: 0,
        outofmemory: 0,
    };

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Self) {
        self.items += other.items;
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        self.evicted += other.evicted;
        self.evicted_nonzero += other.evicted_nonzero;
        self.reclaimed += other.reclaimed;
        self.crawler_reclaimed += other.crawler_reclaimed;
        self.outofmemory += other.outofmemory;
    }

    /// Zeroes the event counters (`stats reset`), keeping what is stored now.
    pub fn reset_events(&mut self) {
        *self = Self {
            items: self.items,
            bytes: self.bytes,
            chunks: self.chunks,
            ..Self::ZERO
        };
    }
}

/// One class as reported: its id, chunk size and counts summed over the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    /// memcached's class id (1-based).
    pub id: usize,
    /// Chunk size of the class.
    pub chunk_size: usize,
    /// Chunks of this size in one page.
    pub chunks_per_page: u64,
    /// The counts.
    pub counts: ClassCounts,
}

impl ClassStats {
    /// Pages memcached would hold for these chunks: the report's `total_pages`.
    #[must_use]
    pub fn pages(&self) -> u64 {
        self.counts.chunks.div_ceil(self.chunks_per_page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_memcached_defaults() {
        // From `memcached -vv` (1.6, default settings).
        assert_eq!(&CHUNK_SIZES[..6], &[96, 120, 152, 192, 240, 304]);
        assert_eq!(CHUNK_SIZES[29], 66_232);
        assert_eq!(CHUNK_SIZES[30], 82_792);
        assert_eq!(CHUNK_SIZES[37], 394_840);
        assert_eq!(chunks_per_page(0), 10_922);
        assert_eq!(chunks_per_page(30), 12);
    }

    #[test]
    fn classification() {
        assert_eq!(class_index(1), 0);
        assert_eq!(class_index(96), 0);
        assert_eq!(class_index(97), 1);
        // memcached's issue_163.t: a 66 560-byte value lands in class 31.
        assert_eq!(class_index(66_624) + 1, 31);
        assert_eq!(class_index(CHUNK_SIZE_MAX), CLASSES - 1);
        assert_eq!(class_index(10 * CHUNK_SIZE_MAX), CLASSES - 1);
        assert_eq!(chunks_of(100), 1);
        assert_eq!(chunks_of(CHUNK_SIZE_MAX + 1), 2);
        let stats = ClassStats {
            id: 31,
            chunk_size: CHUNK_SIZES[30],
            chunks_per_page: chunks_per_page(30),
            counts: ClassCounts {
                chunks: 13,
                ..ClassCounts::ZERO
            },
        };
        assert_eq!(stats.pages(), 2);
    }
}
