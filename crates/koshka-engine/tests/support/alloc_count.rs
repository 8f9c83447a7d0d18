//! A counting global allocator for the engines' "reads allocate nothing" tests, shared by
//! `crates/koshka-{messages,friends}/tests/alloc.rs` through `#[path]` (each test binary gets
//! its own copy and its own `#[global_allocator]`).
//!
//! Counts are per thread, so the other tests of a binary running in parallel do not disturb
//! them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use koshka_engine::{Cx, Engine, MemoryJournal, Outcome, Reply, Request, Session};

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

pub(crate) fn allocations() -> u64 {
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
pub(crate) fn allocations_per_get(
    engine: &dyn Engine,
    keys: &[&str],
    rounds: u64,
) -> Vec<(String, f64)> {
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
