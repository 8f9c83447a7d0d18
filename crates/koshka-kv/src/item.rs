//! One stored item: a single heap allocation holding a fixed header, the key and the value,
//! reached through a thin (8-byte) pointer.
//!
//! ```text
//!  0        4        8            14       18   19   20
//! +--------+--------+------------+--------+----+----+---------+-----------+
//! |exptime | flags  | cas        | vlen   |klen|bits| key     | value     |
//! |u32 LE  | u32 LE | u48 LE     | u32 LE | u8 | u8 | klen B  | vlen B    |
//! +--------+--------+------------+--------+----+----+---------+-----------+
//! ```
//! * `exptime` — absolute unix seconds, 0 = never expires;
//! * `cas` — 48 bits of a per-partition counter (2^48 updates per partition before it wraps);
//!   it also orders items against a delayed `flush_all` (see the crate docs);
//! * `bits` — bit 0: referenced since the eviction clock last passed (cache mode).
//!
//! The allocation is exactly `20 + klen + vlen` bytes, so a 32-byte key with a 100-byte value
//! takes one 160-byte malloc chunk, and the hash table slot holds only the pointer. The hash
//! is recomputed from the key when the table grows instead of being stored.

// This module owns the one raw allocation of the engine; every unsafe block below relies on
// the invariant that `ptr` points to a live allocation of `Item::len()` bytes, align 1,
// created by `Item::alloc` and freed only by `Drop`.
#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Bytes of the fixed header in front of the key.
pub const ITEM_HEADER_SIZE: usize = 20;

/// Bytes glibc's malloc keeps in front of each allocation.
const MALLOC_HEADER_SIZE: usize = 8;

/// glibc's malloc hands out chunks in multiples of 16 bytes ...
const MALLOC_ALIGN: usize = 16;

/// ... and never smaller than 32 bytes.
const MALLOC_CHUNK_MIN: usize = 32;

/// What one item costs in the hash table: the 8-byte pointer, its control byte, and the empty
/// slots a table between 7/16 and 7/8 full keeps per item.
const TABLE_SLOT_SIZE: usize = 16;

/// Bytes of memory an item with this key and value length accounts for: its allocation as
/// glibc's malloc rounds it, plus its table slot. The memory limit and `stats` count this.
#[must_use]
pub const fn footprint_of(key_len: usize, value_len: usize) -> usize {
    let len = ITEM_HEADER_SIZE + key_len + value_len;
    let chunk = (len + MALLOC_HEADER_SIZE).next_multiple_of(MALLOC_ALIGN);
    let chunk = if chunk < MALLOC_CHUNK_MIN {
        MALLOC_CHUNK_MIN
    } else {
        chunk
    };
    chunk + TABLE_SLOT_SIZE
}

/// Bytes of an item [`Item::prefetch`] asks for: three cache lines, the whole of a 32-byte
/// key with a 100-byte value wherever the allocation starts in its line (the hardware
/// prefetcher follows a longer value once the copy streams through it).
pub const ITEM_PREFETCH_BYTES: usize = 192;

/// Largest cas unique an item can hold (48 bits).
pub const CAS_MAX: u64 = (1 << 48) - 1;

/// Largest value an item can hold (the `vlen` field is 32 bits; limits keep values far below).
pub const ITEM_VALUE_LEN_MAX: usize = u32::MAX as usize;

const VLEN_AT: usize = 14;
const KEY_LEN_AT: usize = 18;
const BITS_AT: usize = 19;
const REFERENCED: u8 = 1;

/// An item; see the module docs for its layout.
pub struct Item {
    ptr: NonNull<u8>,
}

// SAFETY: an Item exclusively owns its allocation (like Box<[u8]>); it has no interior
// mutability, so sharing &Item across threads or moving it is as safe as for Box<[u8]>.
unsafe impl Send for Item {}
// SAFETY: see above.
unsafe impl Sync for Item {}

/// The fields of an item other than key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    /// Client flags.
    pub flags: u32,
    /// Absolute expiry in unix seconds, 0 = never.
    pub exptime: u32,
    /// cas unique.
    pub cas: u64,
}

fn layout(len: usize) -> Layout {
    // Align 1 and a size below isize::MAX (bounded by the value limit) always form a layout.
    Layout::from_size_align(len, 1).unwrap_or_else(|_| unreachable!("item of {len} bytes"))
}

impl Item {
    /// Allocates an item of `len` bytes and lets `fill` write all of them.
    fn alloc(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        assert!(len >= ITEM_HEADER_SIZE);
        let layout = layout(len);
        // SAFETY: the layout has a non-zero size (at least the header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `ptr` points to `len` freshly allocated bytes that nothing else references.
        // They are uninitialised, so zero them before handing out a slice.
        let bytes = unsafe {
            std::ptr::write_bytes(ptr.as_ptr(), 0, len);
            std::slice::from_raw_parts_mut(ptr.as_ptr(), len)
        };
        fill(bytes);
        let item = Self { ptr };
        assert_eq!(
            item.len(),
            len,
            "header lengths must describe the allocation"
        );
        item
    }

    /// Builds an item whose value is the concatenation of `parts`.
    ///
    /// # Panics
    /// If the key is longer than 255 bytes (callers enforce the 250-byte key limit) or the
    /// value exceeds [`ITEM_VALUE_LEN_MAX`].
    #[must_use]
    pub fn new(key: &[u8], parts: &[&[u8]], meta: ItemMeta) -> Self {
        let key_len = u8::try_from(key.len()).unwrap_or_else(|_| panic!("kv keys are ≤ 255 bytes"));
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        let vlen = u32::try_from(value_len).unwrap_or_else(|_| panic!("value too large"));
        Self::alloc(ITEM_HEADER_SIZE + key.len() + value_len, |bytes| {
            bytes[0..4].copy_from_slice(&meta.exptime.to_le_bytes());
            bytes[4..8].copy_from_slice(&meta.flags.to_le_bytes());
            bytes[8..14].copy_from_slice(&(meta.cas & CAS_MAX).to_le_bytes()[..6]);
            bytes[VLEN_AT..VLEN_AT + 4].copy_from_slice(&vlen.to_le_bytes());
            bytes[KEY_LEN_AT] = key_len;
            let mut at = ITEM_HEADER_SIZE;
            bytes[at..at + key.len()].copy_from_slice(key);
            at += key.len();
            for part in parts {
                bytes[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        })
    }

    /// Rebuilds an item from its raw bytes (snapshot load), checking the layout.
    #[must_use]
    pub fn from_raw(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..ITEM_HEADER_SIZE)?;
        let vlen = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let expected = ITEM_HEADER_SIZE + usize::from(header[KEY_LEN_AT]) + vlen as usize;
        if expected != bytes.len() {
            return None;
        }
        Some(Self::alloc(bytes.len(), |out| out.copy_from_slice(bytes)))
    }

    fn header(&self) -> &[u8] {
        // SAFETY: every allocation is at least ITEM_HEADER_SIZE bytes (asserted in `alloc`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), ITEM_HEADER_SIZE) }
    }

    fn len(&self) -> usize {
        let h = self.header();
        let vlen = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
        ITEM_HEADER_SIZE + usize::from(h[KEY_LEN_AT]) + vlen as usize
    }

    /// The raw bytes (snapshot write).
    #[must_use]
    pub fn raw(&self) -> &[u8] {
        // SAFETY: the allocation holds exactly `len()` initialised bytes (module invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    fn header_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `header`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), ITEM_HEADER_SIZE) }
    }

    /// Bytes of memory this item accounts for: see [`footprint_of`].
    #[must_use]
    pub fn footprint(&self) -> usize {
        footprint_of(self.key().len(), self.value().len())
    }

    /// Asks the CPU to start loading the first [`ITEM_PREFETCH_BYTES`] of the item (header,
    /// key and a small value) into the cache, without waiting: a loop over many items (a
    /// snapshot copying a partition) calls it a few items ahead, so their cache misses
    /// overlap instead of coming one after the other. A hint only: it changes nothing, and
    /// is a no-op off x86-64.
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        for offset in (0..ITEM_PREFETCH_BYTES).step_by(64) {
            let line = self.ptr.as_ptr().wrapping_add(offset);
            // SAFETY: PREFETCHT0 is a hint that never faults and has no visible effect,
            // whatever the address (past the allocation's end included); SSE is part of the
            // x86-64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line.cast::<i8>(),
                );
            }
        }
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        let key_len = usize::from(self.header()[KEY_LEN_AT]);
        &self.raw()[ITEM_HEADER_SIZE..ITEM_HEADER_SIZE + key_len]
    }

    /// The value.
    #[must_use]
    pub fn value(&self) -> &[u8] {
        let key_len = usize::from(self.header()[KEY_LEN_AT]);
        &self.raw()[ITEM_HEADER_SIZE + key_len..]
    }

    /// The header fields.
    #[must_use]
    pub fn meta(&self) -> ItemMeta {
        let h = self.header();
        let mut cas = [0; 8];
        cas[..6].copy_from_slice(&h[8..14]);
        ItemMeta {
            exptime: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            flags: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            cas: u64::from_le_bytes(cas),
        }
    }

    /// Sets the expiry.
    pub fn set_exptime(&mut self, exptime: u32) {
        self.header_mut()[0..4].copy_from_slice(&exptime.to_le_bytes());
    }

    /// Sets the cas unique.
    pub fn set_cas(&mut self, cas: u64) {
        self.header_mut()[8..14].copy_from_slice(&(cas & CAS_MAX).to_le_bytes()[..6]);
    }

    /// Marks the item as recently used (cache mode).
    pub fn touch_referenced(&mut self) {
        self.header_mut()[BITS_AT] |= REFERENCED;
    }

    /// Clears the referenced bit, returning whether it was set.
    pub fn take_referenced(&mut self) -> bool {
        let header = self.header_mut();
        let was = header[BITS_AT] & REFERENCED != 0;
        header[BITS_AT] &= !REFERENCED;
        was
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        let layout = layout(self.len());
        // SAFETY: `ptr` was allocated by `alloc` with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl Clone for Item {
    fn clone(&self) -> Self {
        let raw = self.raw();
        Self::alloc(raw.len(), |out| out.copy_from_slice(raw))
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Eq for Item {}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("meta", &self.meta())
            .field("value_len", &self.value().len())
            .finish()
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
            cas: CAS_MAX,
        };
        let mut item = Item::new(b"key", &[b"val", b"ue"], meta);
        assert_eq!(item.key(), b"key");
        assert_eq!(item.value(), b"value");
        assert_eq!(item.meta(), meta);
        assert_eq!(item.raw().len(), ITEM_HEADER_SIZE + 3 + 5);
        item.set_exptime(0);
        item.set_cas(3);
        assert_eq!(
            item.meta(),
            ItemMeta {
                flags: 7,
                exptime: 0,
                cas: 3
            }
        );
        assert!(!item.take_referenced());
        item.touch_referenced();
        assert!(item.take_referenced());
        assert_eq!(Item::from_raw(item.raw()).as_ref(), Some(&item));
        assert_eq!(item.clone(), item);
        assert_eq!(Item::from_raw(&[0; 3]), None);
        let mut bad = item.raw().to_vec();
        bad.push(0);
        assert_eq!(Item::from_raw(&bad), None);
    }

    #[test]
    fn footprint_counts_malloc_rounding_and_the_table_slot() {
        // 20 + 4 + 10 bytes: a 48-byte malloc chunk and a 16-byte slot.
        assert_eq!(footprint_of(4, 10), 64);
        assert_eq!(footprint_of(0, 0), 32 + 16);
        assert_eq!(footprint_of(3, 66_560), 66_592 + 16);
        let item = Item::new(
            b"key0",
            &[b"0123456789"],
            ItemMeta {
                flags: 0,
                exptime: 0,
                cas: 1,
            },
        );
        assert_eq!(item.footprint(), 64);
    }

    #[test]
    fn empty_key_and_value() {
        let item = Item::new(
            b"",
            &[],
            ItemMeta {
                flags: 0,
                exptime: 0,
                cas: 1,
            },
        );
        assert_eq!((item.key(), item.value()), (&b""[..], &b""[..]));
    }

    #[test]
    fn large_value() {
        let value = vec![7u8; 1 << 20];
        let item = Item::new(
            b"big",
            &[&value],
            ItemMeta {
                flags: 0,
                exptime: 0,
                cas: 1,
            },
        );
        assert_eq!(item.value(), value.as_slice());
    }
}
