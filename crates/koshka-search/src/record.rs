//! Binlog records of the search engine.
//!
//! ```text
//! SET_ITEM    (1): owner i64 | id u32 | type u8 | date u32 | rating u32 | text len u32 | text
//! DELETE_ITEM (2): owner i64 | id u32
//! SET_RATE    (3): owner i64 | id u32 | rating u32
//! ```
//!
//! All integers little-endian (`koshka_engine::codec`). `incr`/`decr` of a rating is logged
//! as the `SET_RATE` of its result, so replay never depends on arithmetic rules.

use koshka_engine::codec::{put_bytes32, put_i64, put_u32, put_u8, Reader};
use koshka_engine::{Error, LogRecord, Result};
use koshka_keys::search::{ID_MAX, ITEM_TEXT_BYTES_MAX, ITEM_TYPE_MAX};

/// Record type of [`Record::SetItem`].
pub const RECORD_SET_ITEM: u16 = 1;
/// Record type of [`Record::DeleteItem`].
pub const RECORD_DELETE_ITEM: u16 = 2;
/// Record type of [`Record::SetRate`].
pub const RECORD_SET_RATE: u16 = 3;

/// One update, as logged; the text is borrowed from the request or the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Index (or re-index) an item.
    SetItem {
        /// Owner (negative: a group).
        owner: i64,
        /// Item id.
        id: u32,
        /// Type.
        kind: u8,
        /// Date.
        date: u32,
        /// Rating.
        rating: u32,
        /// Text.
        text: &'a [u8],
    },
    /// Remove an item.
    DeleteItem {
        /// Owner.
        owner: i64,
        /// Item id.
        id: u32,
    },
    /// Set an item's rating.
    SetRate {
        /// Owner.
        owner: i64,
        /// Item id.
        id: u32,
        /// New rating.
        rating: u32,
    },
}

impl<'a> Record<'a> {
    /// The item: `(owner, id)`.
    #[must_use]
    pub fn item(&self) -> (i64, u32) {
        match *self {
            Self::SetItem { owner, id, .. }
            | Self::DeleteItem { owner, id }
            | Self::SetRate { owner, id, .. } => (owner, id),
        }
    }

    /// Decodes a record read back from the log.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type, a short or long payload, or fields out of
    /// range (an owner of 0, a type outside `1..=ITEM_TYPE_MAX`, a text over the limit).
    pub fn decode(record_type: u16, payload: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(payload, "search record");
        let owner = r.i64()?;
        let id = r.u32()?;
        if owner == 0 || owner.abs() > ID_MAX || id == 0 || i64::from(id) > ID_MAX {
            return Err(Error::corrupt_record(format!(
                "search item {owner}_{id} out of range"
            )));
        }
        let record = match record_type {
            RECORD_SET_ITEM => {
                let kind = r.u8()?;
                if kind == 0 || kind > ITEM_TYPE_MAX {
                    return Err(Error::corrupt_record(format!("search item type {kind}")));
                }
                Self::SetItem {
                    owner,
                    id,
                    kind,
                    date: r.u32()?,
                    rating: r.u32()?,
                    text: r.bytes32(ITEM_TEXT_BYTES_MAX)?,
                }
            }
            RECORD_DELETE_ITEM => Self::DeleteItem { owner, id },
            RECORD_SET_RATE => Self::SetRate {
                owner,
                id,
                rating: r.u32()?,
            },
            other => {
                return Err(Error::corrupt_record(format!(
                    "unknown search record {other}"
                )))
            }
        };
        r.finish()?;
        Ok(record)
    }
}

impl LogRecord for Record<'_> {
    fn record_type(&self) -> u16 {
        match self {
            Self::SetItem { .. } => RECORD_SET_ITEM,
            Self::DeleteItem { .. } => RECORD_DELETE_ITEM,
            Self::SetRate { .. } => RECORD_SET_RATE,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let (owner, id) = self.item();
        put_i64(out, owner);
        put_u32(out, id);
        match *self {
            Self::SetItem {
                kind,
                date,
                rating,
                text,
                ..
            } => {
                put_u8(out, kind);
                put_u32(out, date);
                put_u32(out, rating);
                put_bytes32(out, text);
            }
            Self::DeleteItem { .. } => {}
            Self::SetRate { rating, .. } => put_u32(out, rating),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        for record in [
            Record::SetItem {
                owner: -7,
                id: 3,
                kind: 2,
                date: 9,
                rating: 4,
                text: "кот".as_bytes(),
            },
            Record::DeleteItem { owner: 5, id: 1 },
            Record::SetRate {
                owner: 5,
                id: 1,
                rating: u32::MAX,
            },
        ] {
            let mut out = Vec::new();
            record.encode(&mut out);
            assert_eq!(Record::decode(record.record_type(), &out).unwrap(), record);
            assert!(Record::decode(record.record_type(), &out[..out.len() - 1]).is_err());
            out.push(0);
            assert!(Record::decode(record.record_type(), &out).is_err());
        }
        let mut out = Vec::new();
        Record::DeleteItem { owner: 0, id: 1 }.encode(&mut out);
        assert!(Record::decode(RECORD_DELETE_ITEM, &out).is_err());
        assert!(Record::decode(99, &[0; 12]).is_err());
    }
}
