//! The example engine of `docs/engine-guide.md`: signed 64-bit counters named
//! `counter<id>`, partitioned by id. Small on purpose: it shows every piece an engine needs
//! (a key grammar, records, the one commit and replay path, snapshots, stats, a registration)
//! and nothing else.
//!
//! | request                  | answer                                   |
//! |--------------------------|------------------------------------------|
//! | `get counter7`           | the value, or a miss                     |
//! | `set counter7 0 0 2` `42`| `STORED` (the value must be an integer)  |
//! | `incr counter7 5`        | the new value (a missing counter is 0)   |
//! | `decr counter7 5`        | the new value (memcached's reply is      |
//! |                          | unsigned: a negative counter answers 0;  |
//! |                          | `get` shows the real value)              |
//! | `delete counter7`        | `DELETED` or `NOT_FOUND`                 |
//!
//! Register it in a node with one line: `registry.push(koshka_counter::SPEC)`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use koshka_engine::codec::{put_i64, put_u64, Reader};
use koshka_engine::commit::{self, Locked, LogRecord, Partitions, Positioned};
use koshka_engine::{
    ApplyCtx, Built, Cx, Engine, EngineSetup, EngineSpec, Error, Outcome, Request, Result, Stat,
    StoreMode,
};

/// The registration: one line in a node's registry.
pub const SPEC: EngineSpec = EngineSpec {
    name: "counter",
    default_port: 11299,
    key_len_max: koshka_limits::KEY_LEN_MAX,
    summary: "example engine: named 64-bit counters",
    build,
};

fn build(_setup: &EngineSetup) -> Result<Built> {
    Ok(Built {
        engine: Arc::new(CounterEngine::default()),
        logged: true,
    })
}

/// Number of partitions (a power of two so two cores rarely meet on one lock).
const PARTITIONS: usize = 16;

/// Record types.
const RECORD_SET: u16 = 1;
const RECORD_ADD: u16 = 2;
const RECORD_DELETE: u16 = 3;

/// One update, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    Set { id: u64, value: i64 },
    Add { id: u64, delta: i64 },
    Delete { id: u64 },
}

impl Record {
    fn id(self) -> u64 {
        match self {
            Record::Set { id, .. } | Record::Add { id, .. } | Record::Delete { id } => id,
        }
    }

    fn decode(record_type: u16, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, "counter record");
        let id = r.u64()?;
        let record = match record_type {
            RECORD_SET => Record::Set {
                id,
                value: r.i64()?,
            },
            RECORD_ADD => Record::Add {
                id,
                delta: r.i64()?,
            },
            RECORD_DELETE => Record::Delete { id },
            other => return Err(Error::corrupt_record(format!("unknown type {other}"))),
        };
        r.finish()?;
        Ok(record)
    }
}

impl LogRecord for Record {
    fn record_type(&self) -> u16 {
        match self {
            Record::Set { .. } => RECORD_SET,
            Record::Add { .. } => RECORD_ADD,
            Record::Delete { .. } => RECORD_DELETE,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.id());
        match *self {
            Record::Set { value, .. } => put_i64(out, value),
            Record::Add { delta, .. } => put_i64(out, delta),
            Record::Delete { .. } => {}
        }
    }
}

#[derive(Debug, Default)]
struct Partition {
    pos: u64,
    counters: HashMap<u64, i64>,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

/// The counter engine.
#[derive(Debug)]
pub struct CounterEngine {
    partitions: Partitions<Partition>,
}

impl Default for CounterEngine {
    fn default() -> Self {
        Self {
            partitions: Partitions::new(PARTITIONS, Partition::default),
        }
    }
}

/// Parses `counter<id>`.
fn parse_key(key: &[u8]) -> Result<u64> {
    let digits = key
        .strip_prefix(b"counter")
        .ok_or_else(|| Error::client("counter keys are counter<id>"))?;
    let valid = !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit);
    if !valid {
        return Err(Error::client("counter id must be a decimal number"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn parse_value(data: &[u8]) -> Result<i64> {
    std::str::from_utf8(data.trim_ascii())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::client("counter value must be an integer"))
}

impl CounterEngine {
    fn partition_of(id: u64) -> usize {
        // NOTE: the remainder is below PARTITIONS.
        #[expect(clippy::cast_possible_truncation)]
        let index = (id % PARTITIONS as u64) as usize;
        index
    }

    /// The apply function shared by live updates and replay.
    fn apply(record: &Record, locked: &mut Locked<'_, Partition>, _time: u32) {
        let Some(part) = locked.fresh(Self::partition_of(record.id())) else {
            return;
        };
        match *record {
            Record::Set { id, value } => {
                part.counters.insert(id, value);
            }
            Record::Add { id, delta } => {
                let counter = part.counters.entry(id).or_insert(0);
                *counter = counter.wrapping_add(delta);
            }
            Record::Delete { id } => {
                part.counters.remove(&id);
            }
        }
    }

    fn commit(&self, cx: &Cx<'_>, record: Record) -> Result<Locked<'_, Partition>> {
        let mut locked = self.partitions.lock_one(Self::partition_of(record.id()));
        commit::commit(cx.journal, &mut locked, &record, Self::apply)?;
        Ok(locked)
    }
}

impl Engine for CounterEngine {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        match *request {
            Request::Get { key } => {
                let id = parse_key(key)?;
                let part = self.partitions.lock(Self::partition_of(id));
                let value = part.counters.get(&id).copied();
                let found = cx.reply.value(key, 0, &mut |out| {
                    let Some(value) = value else { return false };
                    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
                    true
                });
                Ok(if found { Outcome::Hit } else { Outcome::Miss })
            }
            Request::Store {
                mode: StoreMode::Set,
                key,
                data,
                ..
            } => {
                let record = Record::Set {
                    id: parse_key(key)?,
                    value: parse_value(data)?,
                };
                self.commit(cx, record)?;
                Ok(Outcome::Stored { cas: 0 })
            }
            Request::Arith {
                key, incr, delta, ..
            } => {
                let id = parse_key(key)?;
                let delta = i64::try_from(delta)
                    .map_err(|_| Error::client("invalid numeric delta argument"))?;
                let delta = if incr { delta } else { -delta };
                let mut locked = self.commit(cx, Record::Add { id, delta })?;
                let value = locked.only().counters.get(&id).copied().unwrap_or(0);
                Ok(Outcome::Number {
                    value: u64::try_from(value).unwrap_or(0),
                    cas: 0,
                    exptime: 0,
                })
            }
            Request::Delete { key, cas: None } => {
                let id = parse_key(key)?;
                let mut locked = self.partitions.lock_one(Self::partition_of(id));
                if !locked.only().counters.contains_key(&id) {
                    return Ok(Outcome::Miss);
                }
                commit::commit(cx.journal, &mut locked, &Record::Delete { id }, Self::apply)?;
                Ok(Outcome::Deleted)
            }
            _ => Err(Error::NotSupported { engine: "counter" }),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        let mut locked = self.partitions.lock_one(Self::partition_of(record.id()));
        commit::replay(&mut locked, &record, ctx, Self::apply);
        Ok(())
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let mut buf = Vec::new();
        for part in self.partitions.iter() {
            buf.clear();
            let part = part.lock();
            put_u64(&mut buf, part.pos);
            put_u64(&mut buf, part.counters.len() as u64);
            for (id, value) in &part.counters {
                put_u64(&mut buf, *id);
                put_i64(&mut buf, *value);
            }
            drop(part);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut r = Reader::new(&bytes, "counter snapshot");
        for (index, part) in self.partitions.iter().enumerate() {
            let mut part = part.lock();
            part.pos = r.u64()?;
            let count = r.u64()?;
            for _ in 0..count {
                let id = r.u64()?;
                if Self::partition_of(id) != index {
                    return Err(Error::Corrupt {
                        what: "counter snapshot",
                        reason: format!("counter {id} in partition {index}"),
                    });
                }
                part.counters.insert(id, r.i64()?);
            }
        }
        r.finish()
    }

    fn stats(&self) -> Vec<Stat> {
        let count: usize = self
            .partitions
            .iter()
            .map(|p| p.lock().counters.len())
            .sum();
        vec![("counter_count".into(), count.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use koshka_engine::{Direct, RecordingJournal, Session};

    use super::*;

    #[test]
    fn updates_replay_and_snapshot_to_the_same_state() {
        let engine = CounterEngine::default();
        let journal = RecordingJournal::default();
        let mut session = Session::default();
        engine
            .set(b"counter7", 0, b"40", &mut session, &journal)
            .unwrap();
        assert_eq!(
            engine.incr(b"counter7", 2, &mut session, &journal).unwrap(),
            Some(42)
        );
        assert_eq!(
            engine.incr(b"counter9", 1, &mut session, &journal).unwrap(),
            Some(1)
        );
        assert!(engine.delete(b"counter9", &mut session, &journal).unwrap());
        assert!(!engine.delete(b"counter9", &mut session, &journal).unwrap());
        assert!(engine.get(b"nope", &mut session).is_err());
        assert!(engine
            .set(b"counter1", 0, b"x", &mut session, &journal)
            .is_err());

        let replayed = CounterEngine::default();
        journal.replay_into(&replayed).unwrap();
        let mut image = Vec::new();
        engine.write_snapshot(&mut image).unwrap();
        let loaded = CounterEngine::default();
        loaded.load_snapshot(&mut image.as_slice()).unwrap();
        for e in [&engine, &replayed, &loaded] {
            let value = e.get(b"counter7", &mut session).unwrap().unwrap();
            assert_eq!(value.data, b"42");
            assert!(e.get(b"counter9", &mut session).unwrap().is_none());
        }
        // Replaying again changes nothing: every record is already in every partition.
        journal.replay_into(&replayed).unwrap();
        assert_eq!(
            replayed
                .get(b"counter7", &mut session)
                .unwrap()
                .unwrap()
                .data,
            b"42"
        );
    }
}
