//! Test helpers: a journal that records every record with deterministic positions and times.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use koshka_engine::{Appended, ApplyCtx, Direct, Engine, Journal, Result, Session, StoreOutcome};
use parking_lot::Mutex;

/// A recorded record.
#[derive(Debug, Clone)]
pub struct Logged {
    pub kind: u16,
    pub payload: Vec<u8>,
    pub ctx: ApplyCtx,
}

/// Keeps every appended record; time advances by one second per record from 1_700_000_000.
#[derive(Debug, Default)]
pub struct Recorder {
    pub log: Mutex<Vec<Logged>>,
}

impl Journal for Recorder {
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended> {
        let mut log = self.log.lock();
        let prev = log.last().map_or(0, |l| l.ctx.pos);
        let pos = prev + payload.len() as u64 + 16;
        let time = 1_700_000_000 + u32::try_from(log.len()).unwrap();
        log.push(Logged {
            kind: record_type,
            payload: payload.to_vec(),
            ctx: ApplyCtx { pos, time },
        });
        Ok(Appended { pos, time })
    }
}

impl Recorder {
    pub fn pos(&self) -> u64 {
        self.log.lock().last().map_or(0, |l| l.ctx.pos)
    }

    pub fn len(&self) -> usize {
        self.log.lock().len()
    }

    pub fn last_time(&self) -> u32 {
        self.log.lock().last().map_or(0, |l| l.ctx.time)
    }

    /// Applies every record with a position above `after` to `engine`.
    pub fn replay(&self, engine: &dyn Engine, after: u64) {
        for l in self.log.lock().iter().filter(|l| l.ctx.pos > after) {
            engine.apply(l.kind, &l.payload, l.ctx).unwrap();
        }
    }
}

pub fn get(engine: &dyn Engine, key: &str) -> Option<String> {
    engine
        .get(key.as_bytes(), &mut Session::default())
        .unwrap()
        .map(|v| String::from_utf8(v.data).unwrap())
}

pub fn set(engine: &dyn Engine, journal: &dyn Journal, key: &str, value: &str) -> StoreOutcome {
    engine
        .set(
            key.as_bytes(),
            0,
            value.as_bytes(),
            &mut Session::default(),
            journal,
        )
        .unwrap()
}
