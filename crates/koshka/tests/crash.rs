//! Crash test: writers push acknowledged operations over real sockets to kv, messages,
//! friends, lists, news and search while the server is killed with SIGKILL at a random moment;
//! after each restart on the same data directory every acknowledged write must be there, and
//! every write whose reply never arrived must be wholly there or wholly absent.
//!
//! * `KOSHKA_SEED=<n>` reruns a seed (printed at the start of each test);
//! * `KOSHKA_CRASH_CYCLES=<n>` kills per durability mode (default 3);
//! * `scripts/crash-test.sh` runs 50 cycles per mode.
//!
//! Cycles alternate between tiny (16 KiB segments, snapshot every 64 KiB), small (64 KiB /
//! 256 KiB) and default storage sizes, so kills land during rotation and background
//! snapshots; a requester thread also sends `stats snapshot` at random times. The data
//! directory starts afresh every 10 cycles to bound the verification work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod crashkit;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashkit::{
    env_usize, seed, Model, Server, ServerOpts, Workload, Writers, SMALL_STORAGE, TINY_STORAGE,
    WORKLOAD_ENGINES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cycles per data directory before starting afresh.
const CYCLES_PER_DIR: usize = 10;

/// Runs `cycles` kill/restart cycles; returns the seed and every violation found.
fn crash_cycles(durability: &'static str, cycles: usize) -> (u64, Vec<String>) {
    let test = format!("crash[{durability}]");
    let seed = seed(&test);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut dir = root.path().join("data0");
    let (mut acked_total, mut in_flight_total) = (0u64, 0u64);
    let mut failures = Vec::new();
    let mut events = Events::default();
    for cycle in 0..cycles {
        if cycle > 0 && cycle % CYCLES_PER_DIR == 0 {
            // Last check of this directory, then a fresh one.
            let server = Server::must_start(&opts(&dir, durability, ""));
            events.count(&server);
            failures.extend(check(&mut model, &server, &test, cycle, "final"));
            drop(server);
            acked_total += model.acked_ops;
            in_flight_total += model.in_flight_ops;
            model = Model::default();
            std::fs::remove_dir_all(&dir).unwrap();
            dir = root.path().join(format!("data{cycle}"));
        }
        let storage = match cycle % 3 {
            0 => TINY_STORAGE,
            1 => SMALL_STORAGE,
            _ => "",
        };
        let server = Server::must_start(&opts(&dir, durability, storage));
        events.count(&server);
        failures.extend(check(&mut model, &server, &test, cycle, "restart"));
        model.ensure_counters(&server);
        let cycle_seed = rng.gen::<u64>();
        let kill_after = Duration::from_millis(rng.gen_range(30..1500));
        let writers = Writers::start(
            &server,
            Workload::default(),
            cycle_seed,
            cycle,
            Duration::from_secs(30),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let requester = (!storage.is_empty()).then(|| {
            crashkit::snapshot_requester(
                WORKLOAD_ENGINES.iter().map(|e| server.port(e)).collect(),
                cycle_seed ^ 1,
                Arc::clone(&stop),
            )
        });
        std::thread::sleep(kill_after);
        let pid = server.pid();
        let stderr = server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let snapshots_requested = requester.map_or(0, |r| r.join().unwrap());
        let logs = writers.join();
        let (mut acked, mut in_flight) = (0, 0);
        for log in logs {
            acked += log.acked.len();
            in_flight += usize::from(log.in_flight.is_some());
            model.absorb(log);
        }
        assert!(
            !stderr.contains("panicked"),
            "{test} cycle {cycle}: server panicked:\n{stderr}"
        );
        println!(
            "{test} cycle {}/{cycles}: storage {}, killed pid {pid} after {} ms, {acked} acked \
             ops, {in_flight} in flight, {snapshots_requested} snapshot requests",
            cycle + 1,
            match cycle % 3 {
                0 => "tiny",
                1 => "small",
                _ => "default",
            },
            kill_after.as_millis(),
        );
    }
    let server = Server::must_start(&opts(&dir, durability, ""));
    events.count(&server);
    failures.extend(check(&mut model, &server, &test, cycles, "final"));
    if durability == "none" {
        return (seed, failures);
    }
    for engine in WORKLOAD_ENGINES {
        let mut c = server.connect(engine);
        let stats = c.stats("").unwrap();
        assert_eq!(
            stats.get("binlog_poisoned").map(String::as_str),
            Some("0"),
            "{engine}: {stats:?}"
        );
    }
    drop(server);
    for engine in WORKLOAD_ENGINES {
        let (ok, report) = crashkit::binlog_tool(&["verify"], &dir.join(engine));
        if !ok {
            failures.push(format!("binlog verify {engine} failed:\n{report}"));
        }
    }
    acked_total += model.acked_ops;
    in_flight_total += model.in_flight_ops;
    println!(
        "CRASH-SUMMARY mode={durability} cycles={cycles} seed={seed} acked_ops={acked_total} \
         in_flight_at_kill={in_flight_total} {events} failures={} seconds={:.1}",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    (seed, failures)
}

fn assert_survives(durability: &'static str) {
    let cycles = env_usize("KOSHKA_CRASH_CYCLES", 3);
    let (seed, failures) = crash_cycles(durability, cycles);
    assert!(
        failures.is_empty(),
        "crash[{durability}] (KOSHKA_SEED={seed}): {} violations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What the restarts had to do, summed over engines and restarts (evidence that kills
/// landed mid-record, mid-rotation and after snapshots).
#[derive(Debug, Default)]
struct Events {
    restarts: u64,
    torn_tails_cut: u64,
    torn_segments_set_aside: u64,
    snapshot_loads: u64,
}

impl Events {
    fn count(&mut self, server: &Server) {
        let stderr = server.stderr();
        self.restarts += 1;
        self.torn_tails_cut += count(&stderr, "binlog: truncated ");
        self.torn_segments_set_aside += count(&stderr, "renamed unusable segment");
        for engine in WORKLOAD_ENGINES {
            let stats = server.connect(engine).stats("").unwrap();
            if stats.get("snapshot_loaded_pos").is_some_and(|p| p != "-1") {
                self.snapshot_loads += 1;
            }
        }
    }
}

fn count(text: &str, needle: &str) -> u64 {
    text.matches(needle).count() as u64
}

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restarts={} torn_tails_cut={} torn_segments_set_aside={} engine_snapshot_loads={}",
            self.restarts, self.torn_tails_cut, self.torn_segments_set_aside, self.snapshot_loads
        )
    }
}

fn opts(dir: &std::path::Path, durability: &'static str, storage: &str) -> ServerOpts {
    let mut o = ServerOpts::new(dir, durability, WORKLOAD_ENGINES);
    o.config = storage.to_string();
    o
}

fn check(model: &mut Model, server: &Server, test: &str, cycle: usize, when: &str) -> Vec<String> {
    let bad = model.verify_and_resolve(server);
    for b in bad.iter().take(20) {
        println!("{test} cycle {cycle} {when}: VIOLATION {b}");
    }
    if !bad.is_empty() {
        println!("server stderr:\n{}", server.stderr());
    }
    println!("{test} cycle {cycle} {when}: verified: {}", model.summary());
    bad
}

#[test]
fn crash_always() {
    assert_survives("always");
}

#[test]
fn crash_everysec() {
    assert_survives("everysec");
}

/// The checker itself: with durability `none` nothing is logged, so a kill loses every
/// acknowledged write and the verification must say so.
#[test]
fn crash_none_loses_writes_and_the_checker_sees_it() {
    let (seed, failures) = crash_cycles("none", 1);
    assert!(
        !failures.is_empty(),
        "durability none lost nothing? (KOSHKA_SEED={seed}) {failures:?}"
    );
}
