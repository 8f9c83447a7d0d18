//! Time sources. Engines never read the wall clock for anything that is logged: updates take
//! their time from the journal ([`crate::Appended::time`]) and reads ask the journal for
//! "now" ([`crate::Journal::now`]), so replay is deterministic and tests never sleep for time
//! to pass (they advance a [`ManualClock`]).
//!
//! A [`Clock`] has two readings: the wall clock ([`Clock::now`], unix seconds, which an
//! operator or NTP may step backwards or forwards) and a monotonic reading
//! ([`Clock::monotonic`], time elapsed since some fixed point of the process, which only moves
//! forward and at the real rate). The binlog combines them so that log time never goes
//! backwards yet advances at the real rate after a wall-clock step.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of unix time in seconds, and of monotonic elapsed time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current wall-clock time, in unix seconds. May jump in either direction.
    fn now(&self) -> u32;

    /// Time elapsed since a fixed point (for the default: the first call in this process).
    /// Never decreases, unaffected by wall-clock steps.
    fn monotonic(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// The system wall clock (and `Instant` for the monotonic reading).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u32 {
        unix_now()
    }
}

/// A clock that only moves when a test moves it.
///
/// [`ManualClock::advance`] models time passing: both readings move. [`ManualClock::set`]
/// models a wall-clock step (an operator or NTP setting the clock): only the wall reading
/// changes, the monotonic one stays where it is.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU32,
    monotonic_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now`, with a monotonic reading of zero.
    #[must_use]
    pub fn new(now: u32) -> Self {
        Self {
            now: AtomicU32::new(now),
            monotonic_ms: AtomicU64::new(0),
        }
    }

    /// Steps the wall clock to `now` (it may go backwards: that is what clock-step tests
    /// need). The monotonic reading does not move.
    pub fn set(&self, now: u32) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// Lets `seconds` pass: the wall clock and the monotonic reading both move forward.
    pub fn advance(&self, seconds: u32) {
        self.now.fetch_add(seconds, Ordering::Relaxed);
        self.monotonic_ms
            .fetch_add(u64::from(seconds) * 1000, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.monotonic_ms.load(Ordering::Relaxed))
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
        assert_eq!(clock.monotonic(), Duration::ZERO);
        clock.advance(5);
        assert_eq!(clock.now(), 105);
        assert_eq!(clock.monotonic(), Duration::from_secs(5));
        clock.set(50);
        assert_eq!(clock.now(), 50);
        // A wall-clock step is not time passing.
        assert_eq!(clock.monotonic(), Duration::from_secs(5));
        assert!(SystemClock.now() > 1_600_000_000);
    }

    #[test]
    fn system_monotonic_never_decreases() {
        let a = SystemClock.monotonic();
        let b = SystemClock.monotonic();
        assert!(b >= a);
    }
}
