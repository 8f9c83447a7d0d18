//! Reads allocate nothing per reply: a counting global allocator watches `Engine::execute` of
//! the typical messages keys (a message, a sublist page, the dialogs list, a conversation
//! page, an unread count) answered into a pre-reserved output buffer, as the server does.
//!
//! Counts are per thread, so the other tests of this binary running in parallel do not
//! disturb them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use koshka_engine::{
    Cx, Direct, Engine, MemoryJournal, Outcome, Reply, Request, Session, ShardSpec,
};
use koshka_messages::{Flavour, MessagesEngine};

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

fn set(engine: &MessagesEngine, journal: &MemoryJournal, key: &str, value: &str) {
    let mut session = Session::default();
    engine
        .set(key.as_bytes(), 0, value.as_bytes(), &mut session, journal)
        .unwrap();
}

#[test]
fn message_reads_allocate_nothing() {
    let engine = MessagesEngine::new(Flavour::Messages, ShardSpec::default());
    let journal = MemoryJournal::default();
    for i in 0..60 {
        let peer = 2 + i % 5;
        set(
            &engine,
            &journal,
            &format!("sendmsg1_{peer}"),
            &format!("0\nhello number {i}, how are you?"),
        );
        set(
            &engine,
            &journal,
            &format!("sendmsg{peer}_1"),
            &format!("0\nfine thanks {i}"),
        );
    }
    let keys = [
        "message1_7",
        "message1_7#1",
        "message2_3",
        "sublist1_0:0",
        "sublist1_0:0#-1,-20",
        "sublist1_0:0#1,20",
        "topmsglist1#-1,-20",
        "dialogs1#1,3",
        "peermsglist1_2#-1,-20",
        "peermsglistpos1_2:1",
        "unreadcount1",
        "unreadcount1_3",
        "timestamp1",
        "flags1_7",
    ];
    let counts = allocations_per_get(&engine, &keys, 1000);
    for (key, per_get) in &counts {
        println!("{key:<28} {per_get:.3} allocations per get");
    }
    let allocating: Vec<_> = counts.iter().filter(|(_, n)| *n > 0.0).collect();
    assert!(allocating.is_empty(), "reads that allocate: {allocating:?}");

    // Search is not allocation-free: the key's words are decoded into a vector, then
    // tokenised and stemmed (the Snowball stemmer returns owned strings) into a list of stem
    // ids: 11 allocations for two words when this was written. Bounded here so that a change
    // that multiplies them is noticed.
    for (key, per_get) in allocations_per_get(&engine, &["search(1,20,hello+number)"], 1000) {
        println!("{key:<28} {per_get:.3} allocations per get");
        assert!(per_get <= 12.0, "{key}: {per_get}");
    }
}
