//! The one commit and replay path every engine uses.
//!
//! An engine keeps its state in [`Partitions`], each partition remembering the log position
//! of the last record applied to it ([`Positioned`]). A live update and a replayed record go
//! through the same steps:
//!
//! ```text
//!   live:   lock partitions (index order) → validate / plan → encode ONE record → append
//!           → apply (cannot fail) → advance each partition to the record's position
//!   replay: decode → lock partitions (index order) → apply to the partitions the record is
//!           new to → advance those partitions
//! ```
//!
//! Everything that can be refused is refused before the append; once the record is in the
//! log, applying it is infallible (an apply that would fail is a bug and asserts). The apply
//! step is one function per engine, shared by [`commit`] and [`replay`], so a replica (which
//! applies shipped records through [`replay`]) ends in the same state as its primary.
//!
//! Snapshots are fuzzy (see the crate docs): a partition whose image already contains a
//! record (its position is not below the record's) skips it. [`Locked::fresh`] hands out only
//! the partitions a record is new to.

use std::cell::RefCell;

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::{Appended, ApplyCtx, Journal, Result};

/// A partition that remembers the log position of the last record applied to it.
pub trait Positioned {
    /// Log position just past the last record applied here (0 = none).
    fn pos(&self) -> u64;
    /// Records that the record ending at `pos` was applied here.
    fn set_pos(&mut self, pos: u64);
}

/// A record an engine writes to its log.
pub trait LogRecord {
    /// The engine-defined record type.
    fn record_type(&self) -> u16;
    /// Appends the payload to `out` (which is empty).
    fn encode(&self, out: &mut Vec<u8>);
}

/// An engine's state: a fixed number of partitions, each behind its own mutex.
pub struct Partitions<P> {
    parts: Box<[Mutex<P>]>,
}

impl<P> std::fmt::Debug for Partitions<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("count", &self.parts.len())
            .finish_non_exhaustive()
    }
}

/// Most partitions a [`Locked`] keeps inline; more spill to the heap (flush, delete-user).
const LOCKED_INLINE: usize = 2;

impl<P> Partitions<P> {
    /// `count` partitions made by `make`.
    ///
    /// # Panics
    /// If `count` is 0.
    pub fn new(count: usize, make: impl FnMut() -> P) -> Self {
        assert!(count > 0, "an engine needs at least one partition");
        Self {
            parts: std::iter::repeat_with(make)
                .take(count)
                .map(Mutex::new)
                .collect(),
        }
    }

    /// Number of partitions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Always false: there is at least one partition.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Locks one partition for a read (or a snapshot).
    pub fn lock(&self, index: usize) -> MutexGuard<'_, P> {
        self.parts[index].lock()
    }

    /// Locks one partition if no one else holds it (eviction across partitions must never
    /// wait on a lock: two writers could wait on each other).
    pub fn try_lock(&self, index: usize) -> Option<MutexGuard<'_, P>> {
        self.parts[index].try_lock()
    }

    /// The partitions in index order, unlocked.
    pub fn iter(&self) -> impl Iterator<Item = &Mutex<P>> {
        self.parts.iter()
    }

    /// Locks the partitions named by `indexes` (any order, repeats allowed) in index order,
    /// the one lock order every engine follows, so two updates never deadlock.
    pub fn lock_set(&self, indexes: &[usize]) -> Locked<'_, P> {
        let mut sorted: SmallVec<[usize; 4]> = indexes.iter().copied().collect();
        sorted.sort_unstable();
        sorted.dedup();
        Locked {
            slots: sorted
                .into_iter()
                .map(|index| Slot {
                    index,
                    guard: self.parts[index].lock(),
                    fresh: false,
                })
                .collect(),
        }
    }

    /// Locks one partition as a [`Locked`] set.
    pub fn lock_one(&self, index: usize) -> Locked<'_, P> {
        let mut slots = SmallVec::new();
        slots.push(Slot {
            index,
            guard: self.parts[index].lock(),
            fresh: false,
        });
        Locked { slots }
    }

    /// Locks every partition, in index order.
    pub fn lock_all(&self) -> Locked<'_, P> {
        Locked {
            slots: self
                .parts
                .iter()
                .enumerate()
                .map(|(index, part)| Slot {
                    index,
                    guard: part.lock(),
                    fresh: false,
                })
                .collect(),
        }
    }
}

struct Slot<'a, P> {
    index: usize,
    guard: MutexGuard<'a, P>,
    /// Whether the record being applied is new to this partition.
    fresh: bool,
}

/// A set of locked partitions, sorted by index.
pub struct Locked<'a, P> {
    slots: SmallVec<[Slot<'a, P>; LOCKED_INLINE]>,
}

impl<'a, P> Locked<'a, P> {
    fn slot(&self, index: usize) -> Option<usize> {
        self.slots.binary_search_by_key(&index, |s| s.index).ok()
    }

    /// A locked partition, for planning.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&P> {
        self.slot(index).map(|s| &*self.slots[s].guard)
    }

    /// A locked partition, mutable, for planning (lazy clean-ups that change no logged state).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut P> {
        self.slot(index).map(|s| &mut *self.slots[s].guard)
    }

    /// A locked partition if the record being applied is new to it; `None` if its image
    /// already holds the record (or it is not locked).
    pub fn fresh(&mut self, index: usize) -> Option<&mut P> {
        let s = self.slot(index)?;
        let slot = &mut self.slots[s];
        slot.fresh.then_some(&mut *slot.guard)
    }

    /// Every locked partition the record being applied is new to.
    pub fn fresh_all(&mut self) -> impl Iterator<Item = &mut P> + use<'_, 'a, P> {
        self.slots
            .iter_mut()
            .filter(|s| s.fresh)
            .map(|s| &mut *s.guard)
    }

    /// The one locked partition of a set made by [`Partitions::lock_one`].
    ///
    /// # Panics
    /// If the set holds more or fewer than one partition.
    pub fn only(&mut self) -> &mut P {
        assert_eq!(
            self.slots.len(),
            1,
            "only() on a set of {}",
            self.slots.len()
        );
        &mut self.slots[0].guard
    }

    /// Indexes of the locked partitions, ascending.
    pub fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().map(|s| s.index)
    }
}

thread_local! {
    /// Encode buffer reused by every commit on this thread: no allocation per record.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Most bytes the per-thread encode buffer keeps between records; a larger record's buffer
/// is released after use so one big value does not pin memory on every thread.
const SCRATCH_KEEP_BYTES_MAX: usize = 1024 * 1024;

/// Commits a live update: encodes `record` once, appends it, applies it to every locked
/// partition with `apply`, and advances them. The caller has validated the update against the
/// locked state; `apply` cannot fail.
///
/// # Errors
/// [`crate::Error::Journal`] when the journal refuses the record; nothing was applied then.
///
/// # Panics
/// If the journal returns a position not past a locked partition's position (positions
/// only grow; anything else is a broken host).
pub fn commit<P, R>(
    journal: &dyn Journal,
    locked: &mut Locked<'_, P>,
    record: &R,
    apply: impl FnOnce(&R, &mut Locked<'_, P>, u32),
) -> Result<Appended>
where
    P: Positioned,
    R: LogRecord + ?Sized,
{
    let appended = SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        record.encode(&mut buf);
        let appended = journal.append(record.record_type(), &buf);
        if buf.capacity() > SCRATCH_KEEP_BYTES_MAX {
            *buf = Vec::new();
        }
        appended
    })?;
    for slot in &mut locked.slots {
        assert!(
            slot.guard.pos() < appended.pos,
            "journal position {} not past partition {} at {}",
            appended.pos,
            slot.index,
            slot.guard.pos()
        );
        slot.fresh = true;
    }
    apply(record, locked, appended.time);
    for slot in &mut locked.slots {
        slot.guard.set_pos(appended.pos);
        slot.fresh = false;
    }
    Ok(appended)
}

/// Applies a record read back from the log (replay, replication) to the locked partitions it
/// is new to, with the same `apply` as [`commit`], and advances them. Returns whether any
/// partition took it. A record that locks no partition changes engine-wide state only (a
/// delayed flush deadline, say) and is always applied: such state must be idempotent.
pub fn replay<P, R>(
    locked: &mut Locked<'_, P>,
    record: &R,
    ctx: ApplyCtx,
    apply: impl FnOnce(&R, &mut Locked<'_, P>, u32),
) -> bool
where
    P: Positioned,
    R: ?Sized,
{
    if locked.slots.is_empty() {
        apply(record, locked, ctx.time);
        return true;
    }
    let mut any = false;
    for slot in &mut locked.slots {
        slot.fresh = slot.guard.pos() < ctx.pos;
        any |= slot.fresh;
    }
    if any {
        apply(record, locked, ctx.time);
        for slot in &mut locked.slots {
            if slot.fresh {
                slot.guard.set_pos(ctx.pos);
                slot.fresh = false;
            }
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryJournal;

    #[derive(Default)]
    struct Part {
        pos: u64,
        sum: i64,
    }

    impl Positioned for Part {
        fn pos(&self) -> u64 {
            self.pos
        }
        fn set_pos(&mut self, pos: u64) {
            self.pos = pos;
        }
    }

    struct Add(usize, usize, i64);

    impl LogRecord for Add {
        fn record_type(&self) -> u16 {
            1
        }
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.2.to_le_bytes());
        }
    }

    fn apply(record: &Add, locked: &mut Locked<'_, Part>, _time: u32) {
        for index in [record.0, record.1] {
            if let Some(part) = locked.fresh(index) {
                part.sum += record.2;
            }
        }
    }

    #[test]
    fn commit_applies_everywhere_and_replay_skips_what_an_image_holds() {
        let parts = Partitions::new(4, Part::default);
        let journal = MemoryJournal::default();
        let mut locked = parts.lock_set(&[3, 1, 3]);
        assert_eq!(locked.indexes().collect::<Vec<_>>(), vec![1, 3]);
        let appended = commit(&journal, &mut locked, &Add(1, 3, 5), apply).unwrap();
        drop(locked);
        assert_eq!(parts.lock(1).sum, 5);
        assert_eq!(parts.lock(3).pos, appended.pos);

        // Partition 1's image holds a later record; partition 3's does not.
        parts.lock(1).pos = appended.pos + 100;
        let mut locked = parts.lock_set(&[1, 3]);
        let ctx = ApplyCtx {
            pos: appended.pos + 50,
            time: 0,
        };
        assert!(replay(&mut locked, &Add(1, 3, 2), ctx, apply));
        drop(locked);
        assert_eq!(parts.lock(1).sum, 5);
        assert_eq!(parts.lock(3).sum, 7);
        assert_eq!(parts.lock(3).pos, ctx.pos);
        let mut locked = parts.lock_set(&[1, 3]);
        assert!(
            !replay(&mut locked, &Add(1, 3, 2), ctx, apply),
            "already applied"
        );
    }

    #[test]
    fn lock_all_and_fresh_all() {
        let parts = Partitions::new(3, Part::default);
        let journal = MemoryJournal::default();
        let mut locked = parts.lock_all();
        commit(&journal, &mut locked, &Add(0, 0, 1), |_, locked, _| {
            for part in locked.fresh_all() {
                part.sum = 9;
            }
        })
        .unwrap();
        drop(locked);
        assert!(parts.iter().all(|p| p.lock().sum == 9));
    }
}
