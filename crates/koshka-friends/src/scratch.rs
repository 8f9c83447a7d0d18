//! Per-thread working lists for reads, so that answering a read allocates nothing once a
//! thread's lists have grown to the sizes its reads need.
//!
//! Reads that must reorder or filter before answering (recent friends newest first, the
//! friends in one folder, a key's privacy rules) fill one of these lists under the partition
//! lock, answer from it and leave it empty. Lists that grew past [`SCRATCH_KEEP_MAX`] entries
//! for one huge read are released afterwards, so one big answer does not pin memory on every
//! worker thread.

use std::cell::RefCell;

use crate::privacy::Rule;
use crate::state::Friend;

/// Most entries a working list keeps between reads (about 12 × 16 384 B = 192 KiB for the
/// largest); a larger one is freed after its read.
pub(crate) const SCRATCH_KEEP_MAX: usize = 16_384;

/// The working lists of one thread.
pub(crate) struct Scratch {
    /// `(id, mask, date)` of friends or requests, to sort newest first.
    pub(crate) dated: Vec<(u32, u32, u32)>,
    /// The friends in one folder.
    pub(crate) friends: Vec<Friend>,
    /// One privacy key's rules.
    pub(crate) rules: Vec<Rule>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            dated: Vec::new(),
            friends: Vec::new(),
            rules: Vec::new(),
        })
    };
}

/// Runs `f` with this thread's working lists, empty, and empties them again afterwards.
///
/// # Panics
/// If called from inside `f` (reads never nest).
pub(crate) fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let result = f(&mut scratch);
        reset(&mut scratch.dated);
        reset(&mut scratch.friends);
        reset(&mut scratch.rules);
        result
    })
}

fn reset<T>(list: &mut Vec<T>) {
    list.clear();
    if list.capacity() > SCRATCH_KEEP_MAX {
        *list = Vec::new();
    }
}
