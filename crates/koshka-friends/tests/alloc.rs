//! Reads allocate nothing per reply: a counting global allocator watches `Engine::execute` of
//! the typical friends keys (a friend list page, recent friends, one friendship, a 20-key
//! privacy check, common friends) answered into a pre-reserved output buffer, as the server
//! does.
//!
//! Counts are per thread, so the other tests of this binary running in parallel do not
//! disturb them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use koshka_engine::{
    Cx, Direct, Engine, MemoryJournal, Outcome, Reply, Request, Session, ShardSpec,
};
use koshka_friends::FriendsEngine;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations and reallocations made by this thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// The server's way of answering: values are rendered straight into one reserved buffer.
struct Output {
    out: Vec<u8>,
}

impl Reply for Output {
    fn item(&mut self, item: &koshka_engine::ItemRef<'_>) {
        self.out.extend_from_slice(item.key);
        self.out.extend_from_slice(item.value);
    }

    fn value(
        &mut self,
        key: &[u8],
        _flags: u32,
        render: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> bool {
        let start = self.out.len();
        self.out.extend_from_slice(key);
        let found = render(&mut self.out);
        if !found {
            self.out.truncate(start);
        }
        found
    }
}

/// Runs every key `rounds` times; returns the allocations per get of each key.
fn allocations_per_get(engine: &dyn Engine, keys: &[&str], rounds: u64) -> Vec<(String, f64)> {
    let journal = MemoryJournal::default();
    let mut session = Session::default();
    let mut output = Output {
        out: Vec::with_capacity(1 << 20),
    };
    let mut run = |key: &str, output: &mut Output| {
        let mut cx = Cx {
            session: &mut session,
            journal: &journal,
            reply: output,
            now: 1_700_000_000,
        };
        let outcome = engine.execute(
            &Request::Get {
                key: key.as_bytes(),
            },
            &mut cx,
        );
        assert!(matches!(outcome, Ok(Outcome::Hit)), "{key}: {outcome:?}");
    };
    // Warm up: first uses may initialise lazily (stemmer tables, thread-locals).
    for key in keys {
        run(key, &mut output);
    }
    keys.iter()
        .map(|key| {
            output.out.clear();
            let before = allocations();
            for _ in 0..rounds {
                run(key, &mut output);
                output.out.clear();
            }
            let per_get = (allocations() - before) as f64 / rounds as f64;
            ((*key).to_string(), per_get)
        })
        .collect()
}

fn set(engine: &FriendsEngine, journal: &MemoryJournal, key: &str, value: &str) {
    let mut session = Session::default();
    engine
        .set(key.as_bytes(), 0, value.as_bytes(), &mut session, journal)
        .unwrap();
}

#[test]
fn friend_reads_allocate_nothing() {
    let engine = FriendsEngine::new(ShardSpec::default());
    let journal = MemoryJournal::default();
    // Users 1 and 2 share friends 100..150; 1 also has 200..250; 3 is a friend of 1.
    for f in 100..150 {
        set(&engine, &journal, &format!("friend1_{f}"), "1");
        set(&engine, &journal, &format!("friend2_{f}"), "1");
    }
    for f in 200..250 {
        set(&engine, &journal, &format!("friend1_{f}"), "3");
    }
    set(&engine, &journal, "friend1_3", "1");
    let rules = ["*0", "*A", "*G", "/G*A", "-3*0", "+3*0", "*0+3", "/0*A"];
    for album in 1..=20 {
        let rule = rules[album % rules.len()];
        set(&engine, &journal, &format!("privacy1_album{album}"), rule);
    }
    let check: Vec<String> = (1..=20).map(|a| format!("album{a}")).collect();
    let check_key = format!("3~1:{}", check.join(","));
    let stranger_key = format!("7~1:{}", check.join(","));
    let keys = [
        "friends1",
        "friends1#1,20",
        "friends_full1#1,20",
        "recent_friends1#1,20",
        "recent_friends1#21,40",
        "friend1_3",
        "friendcnt1",
        "privacy1_album4",
        check_key.as_str(),
        stranger_key.as_str(),
        "common_friends1,2",
    ];
    let counts = allocations_per_get(&engine, &keys, 1000);
    for (key, per_get) in &counts {
        println!("{key:<28} {per_get:.3} allocations per get");
    }
    let allocating: Vec<_> = counts.iter().filter(|(_, n)| *n > 0.0).collect();
    assert!(allocating.is_empty(), "reads that allocate: {allocating:?}");

    // An inline id list (`common_friends<u>:<id,id,…>`, `common_friends_num<u>:<…>`) costs
    // exactly one allocation: the grammar's `ListRef` owns its ids (clients build lists with
    // it too), and the parser sizes that vector once.
    let lists = [
        "common_friends1:3,100,101,200,999",
        "common_friends_num1:2,3",
    ];
    for (key, per_get) in allocations_per_get(&engine, &lists, 1000) {
        println!("{key:<28} {per_get:.3} allocations per get");
        assert!((per_get - 1.0).abs() < f64::EPSILON, "{key}: {per_get}");
    }
}
