//! One stored item: a single heap allocation holding a fixed header, the key and the value.
//!
//! ```text
//!  0        4        8            14       18   19   20
//! +--------+--------+------------+--------+----+----+---------+-----------+
//! |exptime | flags  | cas        | time   |klen|bits| key     | value     |
//! |u32 LE  | u32 LE | u48 LE     | u32 LE | u8 | u8 | klen B  | rest      |
//! +--------+--------+------------+--------+----+----+---------+-----------+
//! ```
//! * `cas` — 48 bits: a per-partition counter (2^48 updates per partition before it wraps);
//! * `exptime` — absolute unix seconds, 0 = never expires;
//! * `time` — log time of the last update (delayed `flush_all` compares it);
//! * `bits` — bit 0: referenced since the eviction clock last passed (cache mode).
//!
//! The value length is implied by the allocation length, so no field stores it, and the hash
//! is recomputed from the key when the table grows instead of being stored.

/// Bytes of the fixed header in front of the key.
pub const ITEM_HEADER_SIZE: usize = 20;

/// Largest cas unique an item can hold (48 bits).
pub const CAS_MAX: u64 = (1 << 48) - 1;

const KEY_LEN_AT: usize = 18;
const BITS_AT: usize = 19;

const REFERENCED: u8 = 1;

/// An item; see the module docs for its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item(Box<[u8]>);

/// The fields of an item other than key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    /// Client flags.
    pub flags: u32,
    /// Absolute expiry in unix seconds, 0 = never.
    pub exptime: u32,
    /// cas unique.
    pub cas: u64,
    /// Log time of the last update.
    pub time: u32,
}

impl Item {
    /// Builds an item whose value is the concatenation of `parts`.
    ///
    /// # Panics
    /// If the key is longer than 255 bytes (callers enforce the 250-byte key limit).
    #[must_use]
    pub fn new(key: &[u8], parts: &[&[u8]], meta: ItemMeta) -> Self {
        assert!(
            key.len() <= usize::from(u8::MAX),
            "kv keys are at most 255 bytes"
        );
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        let mut bytes = Vec::with_capacity(ITEM_HEADER_SIZE + key.len() + value_len);
        bytes.extend_from_slice(&meta.exptime.to_le_bytes());
        bytes.extend_from_slice(&meta.flags.to_le_bytes());
        bytes.extend_from_slice(&(meta.cas & CAS_MAX).to_le_bytes()[..6]);
        bytes.extend_from_slice(&meta.time.to_le_bytes());
        #[expect(clippy::cast_possible_truncation)]
        // NOTE: asserted above that the key length fits a u8.
        bytes.push(key.len() as u8);
        bytes.push(0);
        bytes.extend_from_slice(key);
        for part in parts {
            bytes.extend_from_slice(part);
        }
        Self(bytes.into_boxed_slice())
    }

    /// Rebuilds an item from its raw bytes (snapshot load), checking the layout.
    #[must_use]
    pub fn from_raw(bytes: Box<[u8]>) -> Option<Self> {
        if bytes.len() < ITEM_HEADER_SIZE
            || bytes.len() < ITEM_HEADER_SIZE + usize::from(bytes[KEY_LEN_AT])
        {
            return None;
        }
        Some(Self(bytes))
    }

    /// The raw bytes (snapshot write).
    #[must_use]
    pub fn raw(&self) -> &[u8] {
        &self.0
    }

    /// Bytes of memory this item accounts for: the allocation plus its table slot.
    #[must_use]
    pub fn footprint(&self) -> usize {
        self.0.len() + 24
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.0[ITEM_HEADER_SIZE..ITEM_HEADER_SIZE + usize::from(self.0[KEY_LEN_AT])]
    }

    /// The value.
    #[must_use]
    pub fn value(&self) -> &[u8] {
        &self.0[ITEM_HEADER_SIZE + usize::from(self.0[KEY_LEN_AT])..]
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }

    /// The header fields.
    #[must_use]
    pub fn meta(&self) -> ItemMeta {
        let mut cas = [0; 8];
        cas[..6].copy_from_slice(&self.0[8..14]);
        ItemMeta {
            exptime: self.u32_at(0),
            flags: self.u32_at(4),
            cas: u64::from_le_bytes(cas),
            time: self.u32_at(14),
        }
    }

    /// Sets the expiry.
    pub fn set_exptime(&mut self, exptime: u32) {
        self.0[0..4].copy_from_slice(&exptime.to_le_bytes());
    }

    /// Sets the cas unique and the update time.
    pub fn set_version(&mut self, cas: u64, time: u32) {
        self.0[8..14].copy_from_slice(&(cas & CAS_MAX).to_le_bytes()[..6]);
        self.0[14..18].copy_from_slice(&time.to_le_bytes());
    }

    /// Marks the item as recently used (cache mode).
    pub fn touch_referenced(&mut self) {
        self.0[BITS_AT] |= REFERENCED;
    }

    /// Clears the referenced bit, returning whether it was set.
    pub fn take_referenced(&mut self) -> bool {
        let was = self.0[BITS_AT] & REFERENCED != 0;
        self.0[BITS_AT] &= !REFERENCED;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_roundtrip() {
        let meta = ItemMeta {
            flags: 7,
            exptime: 99,
            cas: 1 << 40,
            time: 5,
        };
        let mut item = Item::new(b"key", &[b"val", b"ue"], meta);
        assert_eq!(item.key(), b"key");
        assert_eq!(item.value(), b"value");
        assert_eq!(item.meta(), meta);
        item.set_exptime(0);
        item.set_version(3, 4);
        assert_eq!(
            item.meta(),
            ItemMeta {
                flags: 7,
                exptime: 0,
                cas: 3,
                time: 4
            }
        );
        assert!(!item.take_referenced());
        item.touch_referenced();
        assert!(item.take_referenced());
        let raw = item.raw().to_vec().into_boxed_slice();
        assert_eq!(Item::from_raw(raw), Some(item));
        assert_eq!(Item::from_raw(vec![0; 3].into_boxed_slice()), None);
    }
}
