//! Log time with an injected clock: it never goes backwards, also across restarts with the
//! wall clock stepped back, and it runs at the real rate, so TTL arithmetic on log time holds.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::CounterEngine;
use koshka_binlog::format::RECORD_TYPE_TIME;
use koshka_binlog::{Durability, Host, PersistConfig, ReadOptions, Reader};
use koshka_engine::ManualClock;
use koshka_limits::Limits;

const T0: u32 = 1_700_000_000;
const DAY: u32 = 86_400;

fn config(dir: &Path, clock: &Arc<ManualClock>, durability: Durability) -> PersistConfig {
    let mut c = PersistConfig::new(dir, "counter", &Limits::test_min());
    c.durability = durability;
    c.segment_size = 4096;
    c.snapshot_log_bytes = 0;
    c.snapshot_on_shutdown = false;
    c.progress = false;
    c.clock = clock.clone();
    c
}

fn open(cfg: &PersistConfig) -> (Arc<CounterEngine>, Host) {
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    (engine, host)
}

/// Every record's time in log order (TIME records included).
fn log_times(dir: &Path) -> Vec<u32> {
    let mut reader = Reader::open(dir, "counter", ReadOptions::default()).unwrap();
    let mut times = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        times.push(r.time);
    }
    times
}

fn time_records(dir: &Path) -> Vec<u32> {
    let mut reader = Reader::open(dir, "counter", ReadOptions::default()).unwrap();
    let mut times = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        if r.record_type == RECORD_TYPE_TIME {
            times.push(r.time);
        }
    }
    times
}

#[test]
fn log_time_never_goes_backwards_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(ManualClock::new(T0));
    let cfg = config(dir.path(), &wall, Durability::EverySec);
    let (engine, host) = open(&cfg);
    engine.add(1, 1, host.journal()).unwrap();
    wall.advance(10);
    engine.add(2, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&1], T0);
    assert_eq!(engine.times()[&2], T0 + 10);
    assert_eq!(host.journal().now(), T0 + 10);
    drop(host);

    // The wall clock is stepped back a day while the process is down.
    wall.set(T0 + 10 - DAY);
    let (engine, host) = open(&cfg);
    assert_eq!(engine.times()[&2], T0 + 10, "replay keeps the logged times");
    assert_eq!(
        host.journal().now(),
        T0 + 10,
        "continues from the last logged time"
    );
    engine.add(3, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&3], T0 + 10);
    // It runs at the real rate, not at the wall clock's.
    wall.advance(100);
    assert_eq!(host.journal().now(), T0 + 110);
    engine.add(4, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&4], T0 + 110);
    // A step back while running changes nothing either.
    wall.set(T0 - 2 * DAY);
    assert_eq!(host.journal().now(), T0 + 110);
    wall.advance(5);
    engine.add(5, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&5], T0 + 115);
    drop(host);

    // Once the wall clock is ahead again it leads.
    wall.set(T0 + DAY);
    let (engine, host) = open(&cfg);
    assert_eq!(host.journal().now(), T0 + DAY);
    engine.add(6, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&6], T0 + DAY);
    drop(host);

    let times = log_times(dir.path());
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(
        time_records(dir.path()),
        [T0, T0 + 10, T0 + 110, T0 + 115, T0 + DAY]
    );
}

/// A key written with a 100 s TTL, then more writes, then a restart after which the wall
/// clock is a day behind: the key expires 100 s of log time after it was written (not a day
/// later), and once expired it stays expired, whatever the wall clock does. Log time resumes
/// from the last *logged* time: seconds that passed with nothing logged before the restart
/// are not counted (docs/durability.md, "Time").
#[test]
fn ttl_arithmetic_on_log_time_survives_a_clock_step_back() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(ManualClock::new(T0));
    let cfg = config(dir.path(), &wall, Durability::Always);
    let (engine, host) = open(&cfg);
    engine.add(42, 1, host.journal()).unwrap();
    let expires_at = engine.times()[&42] + 100;
    wall.advance(30);
    engine.add(43, 1, host.journal()).unwrap();
    drop(host);

    wall.set(T0 + 30 - DAY);
    let (engine, host) = open(&cfg);
    let expired = |host: &Host| host.journal().now() >= expires_at;
    assert_eq!(host.journal().now(), T0 + 30);
    assert!(!expired(&host));
    wall.advance(69);
    assert!(!expired(&host), "expired 99 s after it was set");
    wall.advance(1);
    assert!(expired(&host), "not expired 100 s after it was set");
    wall.set(T0 - 3 * DAY);
    assert!(expired(&host), "an expired key came back");
    // A write records the time, so the key also stays expired across the next restart.
    engine.add(44, 1, host.journal()).unwrap();
    drop(host);
    let (_engine, host) = open(&cfg);
    assert!(expired(&host), "an expired key came back after a restart");
}

#[test]
fn durability_none_time_never_goes_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(ManualClock::new(T0));
    let cfg = config(&dir.path().join("none"), &wall, Durability::None);
    let (engine, host) = open(&cfg);
    engine.add(1, 1, host.journal()).unwrap();
    wall.advance(3);
    wall.set(T0 - DAY);
    engine.add(2, 1, host.journal()).unwrap();
    assert_eq!(engine.times()[&1], T0);
    assert_eq!(engine.times()[&2], T0 + 3);
    assert_eq!(host.journal().now(), T0 + 3);
}
