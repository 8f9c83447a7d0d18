//! Time sources. Engines never read the wall clock for anything that is logged: updates take
//! their time from the journal ([`crate::Appended::time`]) and reads ask the journal for
//! "now" ([`crate::Journal::now`]), so replay is deterministic and tests never sleep for time
//! to pass (they advance a [`ManualClock`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of unix time in seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, in unix seconds.
    fn now(&self) -> u32;
}

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u32 {
        unix_now()
    }
}

/// A clock that only moves when a test moves it.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU32,
}

impl ManualClock {
    /// A clock standing at `now`.
    #[must_use]
    pub fn new(now: u32) -> Self {
        Self {
            now: AtomicU32::new(now),
        }
    }

    /// Sets the time (it may go backwards: that is what clock-step tests need).
    pub fn set(&self, now: u32) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// Moves the time forward by `seconds`.
    pub fn advance(&self, seconds: u32) {
        self.now.fetch_add(seconds, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }
}

/// The current wall-clock time in unix seconds.
#[must_use]
pub fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.now(), 100);
        clock.advance(5);
        assert_eq!(clock.now(), 105);
        clock.set(50);
        assert_eq!(clock.now(), 50);
        assert!(SystemClock.now() > 1_600_000_000);
    }
}
