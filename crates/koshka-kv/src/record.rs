//! Binlog records of the kv engine. Every record is an unconditional mutation: the decision
//! (add vs existing item, cas match, …) was taken before the record was written, so replay
//! needs no reads of other state.
//!
//! | type | name    | payload (little-endian)                                  |
//! |------|---------|----------------------------------------------------------|
//! | 1    | SET     | flags u32, exptime u32, key_len u8, key, value           |
//! | 2    | DELETE  | key                                                      |
//! | 3    | APPEND  | key_len u8, key, data                                    |
//! | 4    | PREPEND | key_len u8, key, data                                    |
//! | 5    | TOUCH   | exptime u32, key                                         |
//! | 6    | FLUSH   | at u32 (0 = clear now, else invalidate items older)      |
//! | 7    | NUMBER  | value u64, key (incr/decr result; flags, expiry kept)    |

use koshka_engine::codec::{put_u32, put_u64, Reader};
use koshka_engine::{Error, LogRecord, Result};

/// Record type: store a whole item.
pub const SET: u16 = 1;
/// Record type: remove an item.
pub const DELETE: u16 = 2;
/// Record type: append to a value.
pub const APPEND: u16 = 3;
/// Record type: prepend to a value.
pub const PREPEND: u16 = 4;
/// Record type: change an expiry.
pub const TOUCH: u16 = 5;
/// Record type: flush everything.
pub const FLUSH: u16 = 6;
/// Record type: set a numeric value (incr/decr).
pub const NUMBER: u16 = 7;

/// A decoded record, borrowing from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// See [`SET`].
    Set {
        /// Key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Absolute expiry.
        exptime: u32,
        /// Value.
        value: &'a [u8],
    },
    /// See [`DELETE`].
    Delete {
        /// Key.
        key: &'a [u8],
    },
    /// See [`APPEND`] and [`PREPEND`].
    Concat {
        /// Key.
        key: &'a [u8],
        /// Data to add.
        data: &'a [u8],
        /// Append (true) or prepend.
        append: bool,
    },
    /// See [`TOUCH`].
    Touch {
        /// Key.
        key: &'a [u8],
        /// Absolute expiry.
        exptime: u32,
    },
    /// See [`FLUSH`].
    Flush {
        /// 0 = now, else the unix time from which older items are invalid.
        at: u32,
    },
    /// See [`NUMBER`].
    Number {
        /// Key.
        key: &'a [u8],
        /// New value.
        value: u64,
    },
}

impl Record<'_> {
    /// The record type.
    #[must_use]
    pub fn record_type(&self) -> u16 {
        match self {
            Record::Set { .. } => SET,
            Record::Delete { .. } => DELETE,
            Record::Concat { append: true, .. } => APPEND,
            Record::Concat { append: false, .. } => PREPEND,
            Record::Touch { .. } => TOUCH,
            Record::Flush { .. } => FLUSH,
            Record::Number { .. } => NUMBER,
        }
    }

    /// The key the record touches (`None` for FLUSH).
    #[must_use]
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Record::Set { key, .. }
            | Record::Delete { key }
            | Record::Concat { key, .. }
            | Record::Touch { key, .. }
            | Record::Number { key, .. } => Some(key),
            Record::Flush { .. } => None,
        }
    }

    /// Appends the payload to `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Record::Set {
                key,
                flags,
                exptime,
                value,
            } => {
                put_u32(out, *flags);
                put_u32(out, *exptime);
                push_key(out, key);
                out.extend_from_slice(value);
            }
            Record::Delete { key } => out.extend_from_slice(key),
            Record::Concat { key, data, .. } => {
                push_key(out, key);
                out.extend_from_slice(data);
            }
            Record::Touch { key, exptime } => {
                put_u32(out, *exptime);
                out.extend_from_slice(key);
            }
            Record::Flush { at } => put_u32(out, *at),
            Record::Number { key, value } => {
                put_u64(out, *value);
                out.extend_from_slice(key);
            }
        }
    }

    /// Decodes a payload of type `record_type`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type or a short payload.
    pub fn decode(record_type: u16, payload: &[u8]) -> Result<Record<'_>> {
        let mut r = Reader::new(payload, "kv record");
        Ok(match record_type {
            SET => {
                let flags = r.u32()?;
                let exptime = r.u32()?;
                let key = read_key(&mut r)?;
                Record::Set {
                    key,
                    flags,
                    exptime,
                    value: r.rest(),
                }
            }
            DELETE => Record::Delete { key: r.rest() },
            APPEND | PREPEND => Record::Concat {
                key: read_key(&mut r)?,
                data: r.rest(),
                append: record_type == APPEND,
            },
            TOUCH => {
                let exptime = r.u32()?;
                Record::Touch {
                    key: r.rest(),
                    exptime,
                }
            }
            FLUSH => Record::Flush { at: r.u32()? },
            NUMBER => {
                let value = r.u64()?;
                Record::Number {
                    key: r.rest(),
                    value,
                }
            }
            other => {
                return Err(Error::corrupt_record(format!(
                    "unknown kv record type {other}"
                )))
            }
        })
    }
}

fn push_key(out: &mut Vec<u8>, key: &[u8]) {
    // Keys are validated to at most KEY_LEN_MAX (250) bytes before a record is built.
    out.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(key);
}

/// Reads a `u8`-length-prefixed key.
fn read_key<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    let len = usize::from(r.u8()?);
    r.bytes(len)
}

impl LogRecord for Record<'_> {
    fn record_type(&self) -> u16 {
        Record::record_type(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        Record::encode(self, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_type() {
        let records = [
            Record::Set {
                key: b"k",
                flags: 3,
                exptime: 9,
                value: b"v",
            },
            Record::Delete { key: b"k" },
            Record::Concat {
                key: b"k",
                data: b"d",
                append: true,
            },
            Record::Concat {
                key: b"k",
                data: b"d",
                append: false,
            },
            Record::Touch {
                key: b"k",
                exptime: 1,
            },
            Record::Flush { at: 0 },
            Record::Number {
                key: b"k",
                value: u64::MAX,
            },
        ];
        let mut buf = Vec::new();
        for record in records {
            record.encode(&mut buf);
            assert_eq!(Record::decode(record.record_type(), &buf).unwrap(), record);
        }
        assert!(Record::decode(SET, b"\x01").is_err());
        assert!(Record::decode(99, b"").is_err());
    }
}
