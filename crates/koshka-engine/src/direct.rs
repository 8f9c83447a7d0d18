//! Calling an engine directly, without a connection: owned answers for tests, benchmarks and
//! tools. [`Direct`] wraps [`Engine::execute`] with the memcached-shaped calls (`get`, `set`,
//! `delete`, `incr`) and collects values into owned [`Value`]s. The server does not use it:
//! it writes values straight into the connection's output buffer.

use crate::request::Collect;
use crate::{
    ArithOptions, Cx, Engine, Error, Journal, Outcome, Request, Result, Session, StoreMode,
};

/// A value returned by [`Direct::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// memcached client flags (1 = PHP-serialised, 0 = plain text/JSON).
    pub flags: u32,
    /// The bytes of the value.
    pub data: Vec<u8>,
}

impl Value {
    /// A value with flags 0.
    #[must_use]
    pub fn text(data: impl Into<Vec<u8>>) -> Self {
        Self {
            flags: 0,
            data: data.into(),
        }
    }
}

/// The answer to a store command as memcached spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
}

/// A journal for reads, which append nothing.
struct NoWrites;

impl Journal for NoWrites {
    fn append(&self, _record_type: u16, _payload: &[u8]) -> Result<crate::Appended> {
        Err(Error::Journal("a read tried to append".into()))
    }
}

/// memcached-shaped calls on any [`Engine`], through [`Engine::execute`].
pub trait Direct {
    /// `get <key>`: `Ok(None)` is a miss.
    ///
    /// # Errors
    /// As [`Engine::execute`].
    fn get(&self, key: &[u8], session: &mut Session) -> Result<Option<Value>>;

    /// `set <key> <flags> 0 <len>` with `value`.
    ///
    /// # Errors
    /// As [`Engine::execute`].
    fn set(
        &self,
        key: &[u8],
        flags: u32,
        value: &[u8],
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<StoreOutcome>;

    /// `delete <key>`: `Ok(true)` is `DELETED`.
    ///
    /// # Errors
    /// As [`Engine::execute`].
    fn delete(&self, key: &[u8], session: &mut Session, journal: &dyn Journal) -> Result<bool>;

    /// `incr`/`decr <key> <|delta|>` (`delta` negative for decr): `Ok(None)` is `NOT_FOUND`.
    ///
    /// # Errors
    /// As [`Engine::execute`].
    fn incr(
        &self,
        key: &[u8],
        delta: i64,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Option<u64>>;
}

impl<E: Engine + ?Sized> Direct for E {
    fn get(&self, key: &[u8], session: &mut Session) -> Result<Option<Value>> {
        let mut reply = Collect::default();
        let mut cx = Cx {
            session,
            journal: &NoWrites,
            reply: &mut reply,
            now: crate::unix_now(),
        };
        self.execute(&Request::Get { key }, &mut cx)?;
        Ok(reply
            .values
            .pop()
            .map(|(_, flags, data)| Value { flags, data }))
    }

    fn set(
        &self,
        key: &[u8],
        flags: u32,
        value: &[u8],
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<StoreOutcome> {
        let request = Request::Store {
            mode: StoreMode::Set,
            key,
            flags,
            exptime: 0,
            cas: 0,
            data: value,
        };
        Ok(match run(self, &request, session, journal)? {
            Outcome::Stored { .. } => StoreOutcome::Stored,
            Outcome::NotStored => StoreOutcome::NotStored,
            Outcome::Exists => StoreOutcome::Exists,
            _ => StoreOutcome::NotFound,
        })
    }

    fn delete(&self, key: &[u8], session: &mut Session, journal: &dyn Journal) -> Result<bool> {
        let request = Request::Delete { key, cas: None };
        Ok(run(self, &request, session, journal)? == Outcome::Deleted)
    }

    fn incr(
        &self,
        key: &[u8],
        delta: i64,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Option<u64>> {
        let request = Request::Arith {
            key,
            incr: delta >= 0,
            delta: delta.unsigned_abs(),
            options: ArithOptions::default(),
        };
        match run(self, &request, session, journal)? {
            Outcome::Number { value, .. } => Ok(Some(value)),
            Outcome::NonNumeric => Err(Error::client(
                "cannot increment or decrement non-numeric value",
            )),
            _ => Ok(None),
        }
    }
}

fn run<E: Engine + ?Sized>(
    engine: &E,
    request: &Request<'_>,
    session: &mut Session,
    journal: &dyn Journal,
) -> Result<Outcome> {
    let mut reply = Collect::default();
    let mut cx = Cx {
        session,
        journal,
        reply: &mut reply,
        now: journal.now(),
    };
    engine.execute(request, &mut cx)
}
