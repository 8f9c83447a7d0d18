//! Mutexes with a rank, so the lock order of the writer is written down once and checked.
//!
//! Every [`Ordered`] mutex has a rank; a thread may only take a mutex whose rank is greater
//! than the rank of every mutex it already holds. Debug builds check this on every `lock`
//! (a thread-local bit set of held ranks) and panic naming both locks; release builds compile
//! the check away. Waiting on a condition variable keeps the rank "held": the thread takes no
//! other lock while it sleeps, and it holds the mutex again when it wakes.

use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard};

#[cfg(debug_assertions)]
thread_local! {
    /// Bit `r` is set while this thread holds a mutex of rank `r`.
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Largest rank: one bit per rank in a `u32`.
pub(crate) const RANK_MAX: u8 = 31;

/// A `parking_lot` mutex with a rank in the lock order.
pub(crate) struct Ordered<T> {
    rank: u8,
    name: &'static str,
    inner: Mutex<T>,
}

/// The guard of an [`Ordered`] mutex.
pub(crate) struct OrderedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    #[cfg(debug_assertions)]
    rank: u8,
}

impl<T> Ordered<T> {
    /// A mutex of rank `rank` (lower ranks are taken first).
    pub(crate) const fn new(rank: u8, name: &'static str, value: T) -> Self {
        assert!(rank <= RANK_MAX);
        Self {
            rank,
            name,
            inner: Mutex::new(value),
        }
    }

    /// Locks, checking the order in debug builds.
    pub(crate) fn lock(&self) -> OrderedGuard<'_, T> {
        self.check();
        let guard = self.inner.lock();
        self.wrap(guard)
    }

    /// Locks if free. The order is checked as for [`Ordered::lock`]: a `try_lock` out of order
    /// does not deadlock, but it hides an order nobody wrote down.
    pub(crate) fn try_lock(&self) -> Option<OrderedGuard<'_, T>> {
        self.check();
        let guard = self.inner.try_lock()?;
        Some(self.wrap(guard))
    }

    /// Wraps a fresh guard, recording (debug builds) that this thread holds the rank.
    fn wrap<'a>(&self, guard: MutexGuard<'a, T>) -> OrderedGuard<'a, T> {
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() | (1 << self.rank)));
        OrderedGuard {
            guard,
            #[cfg(debug_assertions)]
            rank: self.rank,
        }
    }

    #[cfg(debug_assertions)]
    fn check(&self) {
        let held = HELD.with(std::cell::Cell::get);
        let not_below = held >> self.rank;
        assert!(
            not_below == 0,
            "lock order violated: taking {} (rank {}) while holding rank {}",
            self.name,
            self.rank,
            31 - held.leading_zeros()
        );
    }

    #[cfg(not(debug_assertions))]
    fn check(&self) {
        let _ = (self.rank, self.name);
    }
}

impl<'a, T> OrderedGuard<'a, T> {
    /// The inner guard, for `Condvar::wait*`.
    pub(crate) fn inner(&mut self) -> &mut MutexGuard<'a, T> {
        &mut self.guard
    }
}

impl<T> Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for OrderedGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() & !(1 << self.rank)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_fine_and_release_clears() {
        let a = Ordered::new(1, "a", 0u8);
        let b = Ordered::new(2, "b", 0u8);
        {
            let _a = a.lock();
            let _b = b.lock();
        }
        // Both released: taking `a` after `b` in a fresh sequence is fine.
        let _b = b.lock();
        drop(_b);
        let _a = a.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated: taking a (rank 1) while holding rank 2")]
    fn out_of_order_panics_in_debug() {
        let a = Ordered::new(1, "a", 0u8);
        let b = Ordered::new(2, "b", 0u8);
        let _b = b.lock();
        let _a = a.lock();
    }
}
