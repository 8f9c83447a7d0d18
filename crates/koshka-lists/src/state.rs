//! Lists and partitions.
//!
//! A [`List`] keeps its object ids in one sorted `Vec<i32>` and their fields in a parallel
//! `Vec<Fields>`: a membership check is a binary search over 4-byte ids, and an entry costs
//! 20 bytes (the vectors grow by an eighth at a time, not by doubling, so little is left
//! unused). A [`Partition`] maps list ids to lists and, when the engine keeps one, the
//! reverse index of its entries, object → list, as packed `u64`s in a B-tree set (8 bytes
//! per entry plus the tree's slack, about 12 in all); without it, reverse lookups
//! binary-search every list of the partition.

use std::collections::BTreeSet;

use koshka_engine::Positioned;

/// The fields of one entry besides its object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// A signed 64-bit value.
    pub value: i64,
    /// When the entry was created (log time).
    pub date: u32,
    /// 8 flag bits.
    pub flags: u8,
}

/// One list: object ids ascending, with their fields at the same index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct List {
    objects: Vec<i32>,
    fields: Vec<Fields>,
}

impl List {
    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the list has no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Object ids, ascending.
    #[must_use]
    pub fn objects(&self) -> &[i32] {
        &self.objects
    }

    /// Fields, at the index of their object.
    #[must_use]
    pub fn fields(&self) -> &[Fields] {
        &self.fields
    }

    /// The index of `object`, if present.
    #[must_use]
    pub fn find(&self, object: i32) -> Option<usize> {
        self.objects.binary_search(&object).ok()
    }

    /// The fields of `object`, if present.
    #[must_use]
    pub fn get(&self, object: i32) -> Option<Fields> {
        self.find(object).map(|i| self.fields[i])
    }

    /// Creates the entry dated `date`, or changes flags and value of an existing one.
    /// Returns whether it was created.
    pub fn upsert(&mut self, object: i32, flags: u8, value: i64, date: u32) -> bool {
        match self.objects.binary_search(&object) {
            Ok(i) => {
                self.fields[i].flags = flags;
                self.fields[i].value = value;
                false
            }
            Err(i) => {
                if self.objects.len() == self.objects.capacity() {
                    // Grow by an eighth (at least 4): about 6 % unused on average instead of
                    // a quarter with doubling; still amortised O(1) per insert.
                    let more = (self.objects.len() / 8).max(4);
                    self.objects.reserve_exact(more);
                    self.fields.reserve_exact(more);
                }
                self.objects.insert(i, object);
                self.fields.insert(i, Fields { value, date, flags });
                true
            }
        }
    }

    /// Appends an entry greater than every other (snapshot load).
    fn push(&mut self, object: i32, fields: Fields) -> bool {
        if self.objects.last().is_some_and(|&last| last >= object) {
            return false;
        }
        self.objects.push(object);
        self.fields.push(fields);
        true
    }

    /// Removes `object`; returns whether it was there.
    pub fn remove(&mut self, object: i32) -> bool {
        match self.objects.binary_search(&object) {
            Ok(i) => {
                self.objects.remove(i);
                self.fields.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Heap bytes held.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.objects.capacity() * size_of::<i32>() + self.fields.capacity() * size_of::<Fields>()
    }
}

/// Packs (object, list) so that the set orders by object, then list, both signed.
#[must_use]
pub fn reverse_key(object: i32, list: i32) -> u64 {
    let flip = |v: i32| u64::from((v as u32) ^ 0x8000_0000);
    (flip(object) << 32) | flip(list)
}

fn unpack_list(key: u64) -> i32 {
    // NOTE: the low 32 bits hold the list with its sign bit flipped.
    ((key as u32) ^ 0x8000_0000) as i32
}

/// One partition: lists by id, and (optionally) the reverse index of their entries.
#[derive(Debug, Default)]
pub struct Partition {
    /// Log position of the last record applied.
    pub pos: u64,
    lists: ahash::AHashMap<i32, List>,
    reverse: Option<BTreeSet<u64>>,
    entries: u64,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

impl Partition {
    /// An empty partition, with a reverse index if `reverse`.
    #[must_use]
    pub fn new(reverse: bool) -> Self {
        Self {
            reverse: reverse.then(BTreeSet::new),
            ..Self::default()
        }
    }

    /// The list `id`, if it has entries.
    #[must_use]
    pub fn list(&self, id: i32) -> Option<&List> {
        self.lists.get(&id)
    }

    /// Number of lists.
    #[must_use]
    pub fn list_count(&self) -> usize {
        self.lists.len()
    }

    /// Number of entries in all lists.
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.entries
    }

    /// Approximate heap bytes held (lists, their map slots, the reverse index).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let lists: usize = self.lists.values().map(List::heap_bytes).sum();
        let slots = self.lists.capacity() * (size_of::<i32>() + size_of::<List>() + 1);
        // A B-tree leaf holds up to 11 keys in about 100 bytes; nodes run about 3/4 full.
        let reverse = self.reverse.as_ref().map_or(0, |r| r.len() * 12);
        lists + slots + reverse
    }

    /// Every list id, ascending (snapshots).
    #[must_use]
    pub fn list_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.lists.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The lists of this partition holding `object`, appended to `out` (ascending with a
    /// reverse index; in map order without one).
    pub fn lists_of(&self, object: i32, out: &mut Vec<i32>) {
        match &self.reverse {
            Some(reverse) => {
                let range = reverse_key(object, i32::MIN)..=reverse_key(object, i32::MAX);
                out.extend(reverse.range(range).map(|&k| unpack_list(k)));
            }
            None => out.extend(
                self.lists
                    .iter()
                    .filter(|(_, l)| l.find(object).is_some())
                    .map(|(id, _)| *id),
            ),
        }
    }

    /// Whether any list of this partition holds `object`.
    #[must_use]
    pub fn holds_object(&self, object: i32) -> bool {
        match &self.reverse {
            Some(reverse) => {
                let range = reverse_key(object, i32::MIN)..=reverse_key(object, i32::MAX);
                reverse.range(range).next().is_some()
            }
            None => self.lists.values().any(|l| l.find(object).is_some()),
        }
    }

    /// Upserts an entry; see [`List::upsert`].
    pub fn upsert(&mut self, list: i32, object: i32, flags: u8, value: i64, date: u32) {
        if self
            .lists
            .entry(list)
            .or_default()
            .upsert(object, flags, value, date)
        {
            if let Some(reverse) = &mut self.reverse {
                reverse.insert(reverse_key(object, list));
            }
            self.entries += 1;
        }
    }

    /// Removes an entry; returns whether it was there.
    pub fn remove(&mut self, list: i32, object: i32) -> bool {
        let Some(l) = self.lists.get_mut(&list) else {
            return false;
        };
        if !l.remove(object) {
            return false;
        }
        if l.is_empty() {
            self.lists.remove(&list);
        }
        if let Some(reverse) = &mut self.reverse {
            reverse.remove(&reverse_key(object, list));
        }
        self.entries -= 1;
        true
    }

    /// Removes a list; returns whether it existed.
    pub fn remove_list(&mut self, list: i32) -> bool {
        let Some(l) = self.lists.remove(&list) else {
            return false;
        };
        if let Some(reverse) = &mut self.reverse {
            for &object in l.objects() {
                reverse.remove(&reverse_key(object, list));
            }
        }
        self.entries -= l.len() as u64;
        true
    }

    /// Removes `object` from every list here.
    pub fn remove_object(&mut self, object: i32) {
        let mut lists = Vec::new();
        self.lists_of(object, &mut lists);
        for list in lists {
            self.remove(list, object);
        }
    }

    /// Loads one list from a snapshot (entries ascending); `false` if they are not.
    pub fn load_list(&mut self, id: i32, entries: impl Iterator<Item = (i32, Fields)>) -> bool {
        let mut list = List::default();
        for (object, fields) in entries {
            if !list.push(object, fields) {
                return false;
            }
            if let Some(reverse) = &mut self.reverse {
                reverse.insert(reverse_key(object, id));
            }
        }
        if list.is_empty() || self.lists.contains_key(&id) {
            return false;
        }
        self.entries += list.len() as u64;
        self.lists.insert(id, list);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_keys_order_by_object_then_list() {
        let mut keys = [
            reverse_key(5, -3),
            reverse_key(-5, 7),
            reverse_key(5, 2),
            reverse_key(-5, -9),
        ];
        keys.sort_unstable();
        let lists: Vec<i32> = keys.iter().map(|&k| unpack_list(k)).collect();
        assert_eq!(lists, vec![-9, 7, -3, 2]);
        assert_eq!(size_of::<Fields>(), 16);
    }

    #[test]
    fn partitions_keep_the_reverse_index() {
        for reverse in [true, false] {
            partition_reverse_lookups(Partition::new(reverse));
        }
    }

    fn partition_reverse_lookups(mut p: Partition) {
        p.upsert(1, 10, 0, 0, 5);
        p.upsert(-2, 10, 1, 7, 6);
        p.upsert(1, 11, 0, 0, 6);
        p.upsert(1, 10, 3, 9, 99);
        assert_eq!(
            p.list(1).unwrap().get(10),
            Some(Fields {
                value: 9,
                date: 5,
                flags: 3
            })
        );
        let mut out = Vec::new();
        p.lists_of(10, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![-2, 1]);
        p.remove_object(10);
        assert!(!p.holds_object(10));
        assert_eq!(p.entry_count(), 1);
        assert!(p.remove_list(1));
        assert_eq!((p.entry_count(), p.list_count()), (0, 0));
    }
}
