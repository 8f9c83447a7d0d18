//! [`LogClock`]: the time the log records, which never goes backwards, also across restarts.
//!
//! ```text
//!   log now = max( wall now,                                  (follow the wall clock …)
//!                  anchor + monotonic seconds since open,      (… but never fall behind
//!                  last value returned )                          the log, and run at the
//!                                                                 real rate)
//!   anchor  = max( last time found in the log at open, wall clock at open )
//! ```
//! After a restart with the wall clock a day behind, log time continues from the last
//! logged time and advances at the real rate: a key set with a 100 s TTL just before the
//! restart expires about 100 s later, not a day later, and a key that had expired stays
//! expired. The time the process was down is not counted (nothing measured it).
//!
//! Log time counts whole seconds, so the result is computed once per wall-clock second and
//! reused within it: the common call reads the wall clock only. Every wall-clock step (either
//! way) changes the second and is seen at once; the running term may lag by under a second.
//!
//! Both readings come from one injected [`Clock`]: [`Clock::now`] for the wall clock and
//! [`Clock::monotonic`] for elapsed time, so a test drives both with a
//! [`koshka_engine::ManualClock`] (`set` steps the wall clock, `advance` lets time pass).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use koshka_engine::Clock;

/// The log's clock. See the module docs.
#[derive(Debug)]
pub struct LogClock {
    wall: Arc<dyn Clock>,
    /// Log time at open.
    anchor: u32,
    /// The monotonic reading at open.
    anchor_monotonic: Duration,
    /// Largest value returned so far.
    last: AtomicU32,
    /// The wall-clock second of the last full computation (high 32 bits) and its result (low
    /// 32 bits): within one wall second the answer is reused, so the common call costs one
    /// wall-clock read and no monotonic read. The running term may then lag by under a
    /// second, which the 1-second granularity of log time already allows.
    cache: AtomicU64,
}

impl LogClock {
    /// A clock continuing a log whose last recorded time is `log_time` (0 for a new log).
    #[must_use]
    pub fn new(wall: Arc<dyn Clock>, log_time: u32) -> Self {
        let wall_now = wall.now();
        let anchor = log_time.max(wall_now);
        let anchor_monotonic = wall.monotonic();
        Self {
            wall,
            anchor,
            anchor_monotonic,
            last: AtomicU32::new(anchor),
            cache: AtomicU64::new(pack(wall_now, anchor)),
        }
    }

    /// The current log time in unix seconds: never less than any value returned before, nor
    /// than the log time at open.
    #[must_use]
    pub fn now(&self) -> u32 {
        let wall = self.wall.now();
        let cached = self.cache.load(Ordering::Acquire);
        if cached >> 32 == u64::from(wall) {
            #[expect(clippy::cast_possible_truncation)]
            // NOTE: the low 32 bits hold a u32 by construction (pack).
            let value = cached as u32;
            return value.max(self.last.load(Ordering::Acquire));
        }
        let value = self.compute(wall);
        self.cache.store(pack(wall, value), Ordering::Release);
        value
    }

    /// The formula of the module docs, for a wall-clock reading of `wall`.
    fn compute(&self, wall: u32) -> u32 {
        let elapsed = self
            .wall
            .monotonic()
            .saturating_sub(self.anchor_monotonic)
            .as_secs();
        let running = u64::from(self.anchor).saturating_add(elapsed);
        let running = u32::try_from(running).unwrap_or(u32::MAX);
        let candidate = wall.max(running);
        // Appenders on every core call this: write the shared value once a second only.
        let seen = self.last.load(Ordering::Acquire);
        if candidate <= seen {
            return seen;
        }
        let previous = self.last.fetch_max(candidate, Ordering::AcqRel);
        previous.max(candidate)
    }

    /// The wall-clock source (for informative timestamps such as file creation times).
    #[must_use]
    pub fn wall(&self) -> &Arc<dyn Clock> {
        &self.wall
    }
}

fn pack(wall: u32, value: u32) -> u64 {
    (u64::from(wall) << 32) | u64::from(value)
}

#[cfg(test)]
mod tests {
    use koshka_engine::ManualClock;

    use super::*;

    const DAY: u32 = 86_400;

    #[test]
    fn follows_the_wall_clock_forward() {
        let wall = Arc::new(ManualClock::new(1_000_000));
        let clock = LogClock::new(wall.clone(), 0);
        assert_eq!(clock.now(), 1_000_000);
        wall.advance(10);
        assert_eq!(clock.now(), 1_000_010);
        // A forward step is followed at once.
        wall.set(1_000_500);
        assert_eq!(clock.now(), 1_000_500);
    }

    #[test]
    fn a_backward_step_keeps_time_running_at_the_real_rate() {
        let wall = Arc::new(ManualClock::new(1_000_000));
        let clock = LogClock::new(wall.clone(), 0);
        wall.advance(5);
        assert_eq!(clock.now(), 1_000_005);
        wall.set(1_000_000 - DAY);
        assert_eq!(clock.now(), 1_000_005, "never backwards");
        wall.advance(100);
        assert_eq!(clock.now(), 1_000_105, "runs at the real rate");
    }

    #[test]
    fn continues_from_the_log_when_the_wall_clock_is_behind() {
        let wall = Arc::new(ManualClock::new(1_000_000 - DAY));
        let clock = LogClock::new(wall.clone(), 1_000_000);
        assert_eq!(clock.now(), 1_000_000);
        wall.advance(100);
        assert_eq!(clock.now(), 1_000_100);
        // When the wall clock catches up and passes, it leads again.
        wall.set(1_000_000 + 50_000);
        assert_eq!(clock.now(), 1_050_000);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let wall = Arc::new(ManualClock::new(10));
        let clock = LogClock::new(wall.clone(), u32::MAX - 3);
        wall.advance(100);
        assert_eq!(clock.now(), u32::MAX);
    }
}
