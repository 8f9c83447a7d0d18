//! Binlog records of the lists engine. Every update is one of these; `apply` cannot fail.

use koshka_engine::codec::{put_i64, put_u32, put_u8, Reader};
use koshka_engine::{Error, LogRecord, Result};

/// `ENTRY_SET list obj flags value`: creates the entry (dated by the record's log time) or
/// changes its flags and value (keeping its date).
pub const RECORD_ENTRY_SET: u16 = 1;
/// `ENTRY_DEL list obj`.
pub const RECORD_ENTRY_DEL: u16 = 2;
/// `LIST_DEL list`: the whole list.
pub const RECORD_LIST_DEL: u16 = 3;
/// `OBJECT_DEL obj`: the object from every list of the shard.
pub const RECORD_OBJECT_DEL: u16 = 4;

/// One update, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Upsert an entry.
    EntrySet {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
        /// New flags.
        flags: u8,
        /// New value.
        value: i64,
    },
    /// Remove an entry.
    EntryDel {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// Remove a list.
    ListDel {
        /// The list.
        list: i32,
    },
    /// Remove an object from every list.
    ObjectDel {
        /// The object.
        object: i32,
    },
}

fn put_id(out: &mut Vec<u8>, id: i32) {
    put_u32(out, id as u32);
}

fn id(r: &mut Reader<'_>) -> Result<i32> {
    let id = r.u32()? as i32;
    if id == 0 || id == i32::MIN {
        return Err(Error::corrupt_record(format!("lists: bad id {id}")));
    }
    Ok(id)
}

impl Record {
    /// Decodes a logged record.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type or a malformed payload.
    pub fn decode(record_type: u16, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, "lists record");
        let record = match record_type {
            RECORD_ENTRY_SET => Self::EntrySet {
                list: id(&mut r)?,
                object: id(&mut r)?,
                flags: r.u8()?,
                value: r.i64()?,
            },
            RECORD_ENTRY_DEL => Self::EntryDel {
                list: id(&mut r)?,
                object: id(&mut r)?,
            },
            RECORD_LIST_DEL => Self::ListDel { list: id(&mut r)? },
            RECORD_OBJECT_DEL => Self::ObjectDel {
                object: id(&mut r)?,
            },
            other => {
                return Err(Error::corrupt_record(format!(
                    "lists: unknown type {other}"
                )))
            }
        };
        r.finish()?;
        Ok(record)
    }

    /// The list the record touches (`None`: every list of the shard).
    #[must_use]
    pub fn list(&self) -> Option<i32> {
        match *self {
            Self::EntrySet { list, .. } | Self::EntryDel { list, .. } | Self::ListDel { list } => {
                Some(list)
            }
            Self::ObjectDel { .. } => None,
        }
    }
}

impl LogRecord for Record {
    fn record_type(&self) -> u16 {
        match self {
            Self::EntrySet { .. } => RECORD_ENTRY_SET,
            Self::EntryDel { .. } => RECORD_ENTRY_DEL,
            Self::ListDel { .. } => RECORD_LIST_DEL,
            Self::ObjectDel { .. } => RECORD_OBJECT_DEL,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Self::EntrySet {
                list,
                object,
                flags,
                value,
            } => {
                put_id(out, list);
                put_id(out, object);
                put_u8(out, flags);
                put_i64(out, value);
            }
            Self::EntryDel { list, object } => {
                put_id(out, list);
                put_id(out, object);
            }
            Self::ListDel { list } => put_id(out, list),
            Self::ObjectDel { object } => put_id(out, object),
        }
    }
}
