//! [`Lanes`] against a serial replay on a toy engine whose state records the order in which
//! every partition saw its records, and what every barrier saw.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use proptest::prelude::*;

use super::*;
use crate::{Cx, Outcome, Request, Result, Stat};

const PARTS: usize = 7;
/// Payload: partition u8, value u32. Touches one partition.
const ADD: u16 = 1;
/// Payload: empty. Touches every partition: a barrier.
const MARK: u16 = 2;
/// Payload: partition u8. Touches one partition and fails to apply.
const BAD: u16 = 3;
/// Payload: garbage the engine cannot decode (no partition; fails to apply).
const JUNK: u16 = 4;

/// What each partition saw, in order: (pos, time, value); a MARK is value u32::MAX plus, in
/// `marks`, how many records all partitions had seen when it ran.
#[derive(Default)]
struct Toy {
    parts: [Mutex<Vec<(u64, u32, u32)>>; PARTS],
    marks: Mutex<Vec<(u64, usize)>>,
}

impl Toy {
    fn seen(&self) -> Vec<Vec<(u64, u32, u32)>> {
        self.parts.iter().map(|p| p.lock().clone()).collect()
    }
}

impl Engine for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn execute(&self, _request: &Request<'_>, _cx: &mut Cx<'_>) -> Result<Outcome> {
        Err(Error::NotSupported { engine: "toy" })
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        match (record_type, payload) {
            (ADD, [part, value @ ..]) => {
                let value =
                    u32::from_le_bytes(value.try_into().map_err(|_| Error::corrupt_record("len"))?);
                self.parts[usize::from(*part)]
                    .lock()
                    .push((ctx.pos, ctx.time, value));
                Ok(())
            }
            (MARK, []) => {
                let total = self.parts.iter().map(|p| p.lock().len()).sum();
                self.marks.lock().push((ctx.pos, total));
                for part in &self.parts {
                    part.lock().push((ctx.pos, ctx.time, u32::MAX));
                }
                Ok(())
            }
            _ => Err(Error::corrupt_record(format!(
                "type {record_type} at {}",
                ctx.pos
            ))),
        }
    }

    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        match (record_type, payload) {
            (ADD | BAD, [part, ..]) => Some(usize::from(*part)),
            _ => None,
        }
    }

    fn write_snapshot(&self, _out: &mut dyn std::io::Write) -> Result<()> {
        Ok(())
    }

    fn load_snapshot(&self, _input: &mut dyn std::io::Read) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }
}

/// (type, payload) of a generated record.
fn record() -> impl Strategy<Value = (u16, Vec<u8>)> {
    prop_oneof![
        40 => (0..PARTS as u8, any::<u32>()).prop_map(|(p, v)| {
            let mut payload = vec![p];
            payload.extend_from_slice(&v.to_le_bytes());
            (ADD, payload)
        }),
        1 => Just((MARK, Vec::new())),
    ]
}

/// Replays `records` (positions 10, 20, …; time = pos / 30) into a fresh toy engine.
fn replay(
    records: &[(u16, Vec<u8>)],
    threads: usize,
) -> (Arc<Toy>, std::result::Result<(), Failed>, usize) {
    let toy = Arc::new(Toy::default());
    let mut lanes = Lanes::new(toy.clone(), threads);
    let mut result = Ok(());
    for (i, (record_type, payload)) in records.iter().enumerate() {
        let pos = (i as u64 + 1) * 10;
        let ctx = ApplyCtx {
            pos,
            time: (pos / 30) as u32,
        };
        result = lanes.apply(*record_type, payload, ctx);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = lanes.finish();
    }
    let used = lanes.threads();
    drop(lanes);
    (toy, result, used)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every partition sees its records in log order with their positions and times, and
    /// every barrier runs after exactly the records before it: the same as a serial replay.
    #[test]
    fn lanes_end_where_a_serial_replay_ends(
        records in proptest::collection::vec(record(), 0..3000),
        threads in 2usize..5,
    ) {
        let (serial, ok, used) = replay(&records, 1);
        prop_assert!(ok.is_ok());
        prop_assert_eq!(used, 0);
        let (parallel, ok, used) = replay(&records, threads);
        prop_assert!(ok.is_ok());
        let partitioned = records.iter().any(|(t, _)| *t == ADD);
        prop_assert_eq!(used, if partitioned { threads } else { 0 });
        prop_assert_eq!(parallel.seen(), serial.seen());
        prop_assert_eq!(&*parallel.marks.lock(), &*serial.marks.lock());
    }

    /// A replay stops at the earliest record in log order that fails, whichever lane (or the
    /// calling thread) it was on.
    #[test]
    fn the_earliest_failure_is_reported(
        mut records in proptest::collection::vec(record(), 1..2000),
        bad in proptest::collection::vec((any::<prop::sample::Index>(), 0..PARTS as u8, any::<bool>()), 1..4),
        threads in 2usize..5,
    ) {
        for (at, part, junk) in &bad {
            let at = at.index(records.len());
            records[at] = if *junk { (JUNK, vec![0xff; 3]) } else { (BAD, vec![*part]) };
        }
        let first = records.iter().position(|(t, _)| *t == BAD || *t == JUNK).unwrap();
        let (_, serial, _) = replay(&records, 1);
        let (_, parallel, _) = replay(&records, threads);
        let (serial, parallel) = (serial.unwrap_err(), parallel.unwrap_err());
        prop_assert_eq!(serial.ctx.pos, (first as u64 + 1) * 10);
        prop_assert_eq!(parallel.ctx.pos, serial.ctx.pos);
        prop_assert_eq!(parallel.record_type, serial.record_type);
        prop_assert_eq!(parallel.payload_len, serial.payload_len);
    }
}

#[test]
fn an_engine_that_does_not_opt_in_replays_on_the_calling_thread() {
    struct Serial(Toy);
    impl Engine for Serial {
        fn name(&self) -> &'static str {
            "serial"
        }
        fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
            self.0.execute(request, cx)
        }
        fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
            assert!(
                std::thread::current()
                    .name()
                    .is_none_or(|n| !n.starts_with("replay-")),
                "applied on an apply thread"
            );
            self.0.apply(record_type, payload, ctx)
        }
        fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<()> {
            self.0.write_snapshot(out)
        }
        fn load_snapshot(&self, input: &mut dyn std::io::Read) -> Result<()> {
            self.0.load_snapshot(input)
        }
        fn stats(&self) -> Vec<Stat> {
            Vec::new()
        }
    }
    let engine = Arc::new(Serial(Toy::default()));
    let mut lanes = Lanes::new(engine.clone(), 3);
    for i in 0..1000u32 {
        let mut payload = vec![(i % 7) as u8];
        payload.extend_from_slice(&i.to_le_bytes());
        let ctx = ApplyCtx {
            pos: u64::from(i) + 1,
            time: 0,
        };
        lanes.apply(ADD, &payload, ctx).unwrap();
    }
    lanes.finish().unwrap();
    assert_eq!(
        (lanes.threads(), lanes.barriers()),
        (0, 0),
        "no thread started"
    );
    let counts: BTreeMap<usize, usize> = engine
        .0
        .seen()
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.len()))
        .collect();
    assert_eq!(counts.values().sum::<usize>(), 1000);
}

#[test]
fn a_panicking_apply_thread_is_reported_not_hung() {
    struct Panics;
    impl Engine for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn execute(&self, _request: &Request<'_>, _cx: &mut Cx<'_>) -> Result<Outcome> {
            Err(Error::NotSupported { engine: "panics" })
        }
        fn apply(&self, _record_type: u16, _payload: &[u8], ctx: ApplyCtx) -> Result<()> {
            assert!(ctx.pos != 500, "broken invariant at 500");
            Ok(())
        }
        fn replay_partition(&self, _record_type: u16, payload: &[u8]) -> Option<usize> {
            Some(usize::from(payload[0]))
        }
        fn write_snapshot(&self, _out: &mut dyn std::io::Write) -> Result<()> {
            Ok(())
        }
        fn load_snapshot(&self, _input: &mut dyn std::io::Read) -> Result<()> {
            Ok(())
        }
        fn stats(&self) -> Vec<Stat> {
            Vec::new()
        }
    }
    let outcome = std::panic::catch_unwind(|| {
        let mut lanes = Lanes::new(Arc::new(Panics), 2);
        for pos in 1..=1000u64 {
            let ctx = ApplyCtx { pos, time: 0 };
            let _ = lanes.apply(ADD, &[(pos % 2) as u8], ctx);
        }
        let _ = lanes.finish();
    });
    let message = outcome.unwrap_err();
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| message.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default();
    assert!(text.contains("broken invariant at 500"), "{text}");
}
