//! Binlog records of the messages engine.
//!
//! Every record is a `u16` type and a little-endian payload. Records carry every id they
//! create (local ids of new messages), so replay can verify that it allocates the same ids
//! and a two-mailbox send can be applied one half at a time (the fuzzy-snapshot contract
//! may skip one half). Time is never stored: apply takes it from the log (`ApplyCtx::time`).
//!
//! Text layout, shared by every record that carries a text:
//! ```text
//! +----------------+----------------+-------------+---------+---------+------+
//! | kludges_len u16| subject_len u16| body_len u32| kludges | subject | body |
//! +----------------+----------------+-------------+---------+---------+------+
//! ```

use koshka_engine::{Error, Result};

/// `ADD`: one message in one mailbox ("deliver only one side"; wall posts too).
/// `owner i64, lid u32, peer i64, peer_lid u32, flags u32, text`.
pub const RECORD_ADD: u16 = 0x4d01;
/// `SEND`: a private message stored in two mailboxes of this node, linked to each other.
/// `from i64, from_lid u32, from_flags u32, to i64, to_lid u32, to_flags u32, text`.
pub const RECORD_SEND: u16 = 0x4d02;
/// `FLAGS`: `owner i64, lid u32, op u8 (0 set, 1 or, 2 and-not), value u32`.
pub const RECORD_FLAGS: u16 = 0x4d03;
/// `READ_UPTO`: clear UNREAD on inbox messages from `peer` up to `lid` (0 = all).
/// `owner i64, peer i64, lid u32`.
pub const RECORD_READ_UPTO: u16 = 0x4d04;
/// `EDIT`: replace a message's text. `owner i64, lid u32, text`.
pub const RECORD_EDIT: u16 = 0x4d05;
/// `DELETE`: remove one message for good. `owner i64, lid u32`.
pub const RECORD_DELETE: u16 = 0x4d06;
/// `DELETE_DIALOG`: remove every message with one peer. `owner i64, peer i64`.
pub const RECORD_DELETE_DIALOG: u16 = 0x4d07;
/// `TRIM`: remove every message with a local id below `min_lid`. `owner i64, min_lid u32`.
pub const RECORD_TRIM: u16 = 0x4d08;
/// `EXTRA`: `owner i64, lid u32, field u8, op u8 (0 set, 1 add), value i64`.
pub const RECORD_EXTRA: u16 = 0x4d09;
/// `REPOST` (wall): a copy of another post, linked to it; sets COPIED on the original when
/// the original lives on this node.
/// `owner i64, lid u32, author i64, flags u32, orig_owner i64, orig_id u32, text`.
pub const RECORD_REPOST: u16 = 0x4d0a;

/// `PEER_LINK`: set the twin id of a one-sided copy once the other side is known
/// (cross-shard sends). `owner i64, lid u32, peer_lid u32`.
pub const RECORD_PEER_LINK: u16 = 0x4d0b;

/// The text, flag and extra-field operations come from the key grammar, so a parsed update
/// and its record share them.
pub use koshka_keys::messages::{ExtraOp, FlagOp, Text};

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// See [`RECORD_ADD`].
    Add {
        /// Mailbox.
        owner: i64,
        /// Local id allocated.
        lid: u32,
        /// Correspondent (mail) or author (wall).
        peer: i64,
        /// Twin message id (mail) or parent post (wall replies); 0 = none.
        peer_lid: u32,
        /// Flags.
        flags: u32,
        /// Text.
        text: Text,
    },
    /// See [`RECORD_SEND`].
    Send {
        /// Sender.
        from: i64,
        /// Sender's outbox copy id.
        from_lid: u32,
        /// Flags of the outbox copy.
        from_flags: u32,
        /// Recipient.
        to: i64,
        /// Recipient's inbox copy id.
        to_lid: u32,
        /// Flags of the inbox copy.
        to_flags: u32,
        /// Text.
        text: Text,
    },
    /// See [`RECORD_FLAGS`].
    Flags {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Operation.
        op: FlagOp,
        /// Operand.
        value: u32,
    },
    /// See [`RECORD_READ_UPTO`].
    ReadUpto {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
        /// Last message marked read; 0 = the whole dialog.
        lid: u32,
    },
    /// See [`RECORD_EDIT`].
    Edit {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// New text.
        text: Text,
    },
    /// See [`RECORD_DELETE`].
    Delete {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
    },
    /// See [`RECORD_DELETE_DIALOG`].
    DeleteDialog {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
    },
    /// See [`RECORD_TRIM`].
    Trim {
        /// Mailbox.
        owner: i64,
        /// Messages below this id are removed.
        min_lid: u32,
    },
    /// See [`RECORD_EXTRA`].
    Extra {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Field number, below [`crate::EXTRA_FIELDS`].
        field: u8,
        /// Operation.
        op: ExtraOp,
        /// Operand.
        value: i64,
    },
    /// See [`RECORD_PEER_LINK`].
    PeerLink {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Twin id in the peer's mailbox.
        peer_lid: u32,
    },
    /// See [`RECORD_REPOST`].
    Repost {
        /// Wall the copy goes to.
        owner: i64,
        /// Local id allocated for the copy.
        lid: u32,
        /// Who reposted.
        author: i64,
        /// Flags of the copy (COPY included).
        flags: u32,
        /// Wall of the original.
        orig_owner: i64,
        /// Id of the original.
        orig_id: u32,
        /// Copied text.
        text: Text,
    },
}

impl Record {
    /// The mailboxes this record touches; the first is the primary one.
    #[must_use]
    pub fn owners(&self) -> (i64, Option<i64>) {
        match *self {
            Self::Send { from, to, .. } => (from, Some(to)),
            Self::Repost {
                owner, orig_owner, ..
            } => (owner, Some(orig_owner)),
            Self::Add { owner, .. }
            | Self::Flags { owner, .. }
            | Self::ReadUpto { owner, .. }
            | Self::Edit { owner, .. }
            | Self::Delete { owner, .. }
            | Self::DeleteDialog { owner, .. }
            | Self::Trim { owner, .. }
            | Self::PeerLink { owner, .. }
            | Self::Extra { owner, .. } => (owner, None),
        }
    }

    /// The record's type.
    #[must_use]
    pub fn record_type(&self) -> u16 {
        match self {
            Self::Add { .. } => RECORD_ADD,
            Self::Send { .. } => RECORD_SEND,
            Self::Flags { .. } => RECORD_FLAGS,
            Self::ReadUpto { .. } => RECORD_READ_UPTO,
            Self::Edit { .. } => RECORD_EDIT,
            Self::Delete { .. } => RECORD_DELETE,
            Self::DeleteDialog { .. } => RECORD_DELETE_DIALOG,
            Self::Trim { .. } => RECORD_TRIM,
            Self::Extra { .. } => RECORD_EXTRA,
            Self::PeerLink { .. } => RECORD_PEER_LINK,
            Self::Repost { .. } => RECORD_REPOST,
        }
    }

    /// Encodes the record into its type and payload.
    #[must_use]
    pub fn encode(&self) -> (u16, Vec<u8>) {
        let mut w = Vec::with_capacity(64);
        let kind = self.encode_into(&mut w);
        (kind, w)
    }

    /// Appends the payload to `w`; returns the record's type.
    pub fn encode_into(&self, w: &mut Vec<u8>) -> u16 {
        let kind = match self {
            Self::Add {
                owner,
                lid,
                peer,
                peer_lid,
                flags,
                text,
            } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                put_i64(w, *peer);
                put_u32(w, *peer_lid);
                put_u32(w, *flags);
                put_text(w, text);
                RECORD_ADD
            }
            Self::Send {
                from,
                from_lid,
                from_flags,
                to,
                to_lid,
                to_flags,
                text,
            } => {
                put_i64(w, *from);
                put_u32(w, *from_lid);
                put_u32(w, *from_flags);
                put_i64(w, *to);
                put_u32(w, *to_lid);
                put_u32(w, *to_flags);
                put_text(w, text);
                RECORD_SEND
            }
            Self::Flags {
                owner,
                lid,
                op,
                value,
            } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                w.push(match op {
                    FlagOp::Set => 0,
                    FlagOp::Or => 1,
                    FlagOp::AndNot => 2,
                });
                put_u32(w, *value);
                RECORD_FLAGS
            }
            Self::ReadUpto { owner, peer, lid } => {
                put_i64(w, *owner);
                put_i64(w, *peer);
                put_u32(w, *lid);
                RECORD_READ_UPTO
            }
            Self::Edit { owner, lid, text } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                put_text(w, text);
                RECORD_EDIT
            }
            Self::Delete { owner, lid } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                RECORD_DELETE
            }
            Self::DeleteDialog { owner, peer } => {
                put_i64(w, *owner);
                put_i64(w, *peer);
                RECORD_DELETE_DIALOG
            }
            Self::Trim { owner, min_lid } => {
                put_i64(w, *owner);
                put_u32(w, *min_lid);
                RECORD_TRIM
            }
            Self::Extra {
                owner,
                lid,
                field,
                op,
                value,
            } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                w.push(*field);
                w.push(match op {
                    ExtraOp::Set => 0,
                    ExtraOp::Add => 1,
                });
                put_i64(w, *value);
                RECORD_EXTRA
            }
            Self::PeerLink {
                owner,
                lid,
                peer_lid,
            } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                put_u32(w, *peer_lid);
                RECORD_PEER_LINK
            }
            Self::Repost {
                owner,
                lid,
                author,
                flags,
                orig_owner,
                orig_id,
                text,
            } => {
                put_i64(w, *owner);
                put_u32(w, *lid);
                put_i64(w, *author);
                put_u32(w, *flags);
                put_i64(w, *orig_owner);
                put_u32(w, *orig_id);
                put_text(w, text);
                RECORD_REPOST
            }
        };
        debug_assert_eq!(kind, self.record_type());
        kind
    }

    /// Decodes a record.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type, a short or over-long payload, or a bad enum.
    pub fn decode(kind: u16, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, "messages record");
        let record = match kind {
            RECORD_ADD => Self::Add {
                owner: r.i64()?,
                lid: r.u32()?,
                peer: r.i64()?,
                peer_lid: r.u32()?,
                flags: r.u32()?,
                text: read_text(&mut r)?,
            },
            RECORD_SEND => Self::Send {
                from: r.i64()?,
                from_lid: r.u32()?,
                from_flags: r.u32()?,
                to: r.i64()?,
                to_lid: r.u32()?,
                to_flags: r.u32()?,
                text: read_text(&mut r)?,
            },
            RECORD_FLAGS => Self::Flags {
                owner: r.i64()?,
                lid: r.u32()?,
                op: match r.u8()? {
                    0 => FlagOp::Set,
                    1 => FlagOp::Or,
                    2 => FlagOp::AndNot,
                    other => return Err(Error::corrupt_record(format!("flag op {other}"))),
                },
                value: r.u32()?,
            },
            RECORD_READ_UPTO => Self::ReadUpto {
                owner: r.i64()?,
                peer: r.i64()?,
                lid: r.u32()?,
            },
            RECORD_EDIT => Self::Edit {
                owner: r.i64()?,
                lid: r.u32()?,
                text: read_text(&mut r)?,
            },
            RECORD_DELETE => Self::Delete {
                owner: r.i64()?,
                lid: r.u32()?,
            },
            RECORD_DELETE_DIALOG => Self::DeleteDialog {
                owner: r.i64()?,
                peer: r.i64()?,
            },
            RECORD_TRIM => Self::Trim {
                owner: r.i64()?,
                min_lid: r.u32()?,
            },
            RECORD_EXTRA => Self::Extra {
                owner: r.i64()?,
                lid: r.u32()?,
                field: r.u8()?,
                op: match r.u8()? {
                    0 => ExtraOp::Set,
                    1 => ExtraOp::Add,
                    other => return Err(Error::corrupt_record(format!("extra op {other}"))),
                },
                value: r.i64()?,
            },
            RECORD_PEER_LINK => Self::PeerLink {
                owner: r.i64()?,
                lid: r.u32()?,
                peer_lid: r.u32()?,
            },
            RECORD_REPOST => Self::Repost {
                owner: r.i64()?,
                lid: r.u32()?,
                author: r.i64()?,
                flags: r.u32()?,
                orig_owner: r.i64()?,
                orig_id: r.u32()?,
                text: read_text(&mut r)?,
            },
            other => {
                return Err(Error::corrupt_record(format!(
                    "unknown record type {other:#x}"
                )))
            }
        };
        if !r.is_empty() {
            return Err(Error::corrupt_record(format!(
                "{} trailing bytes in record {kind:#x}",
                r.remaining()
            )));
        }
        Ok(record)
    }
}

pub(crate) use koshka_engine::codec::{put_i64, put_u32, Reader};

/// Appends a text in the shared layout.
#[expect(clippy::cast_possible_truncation)]
pub(crate) fn put_text(w: &mut Vec<u8>, text: &Text) {
    // NOTE: lengths are validated against KLUDGES_BYTES_MAX / SUBJECT_BYTES_MAX /
    // MESSAGE_TEXT_BYTES_MAX before any record is built, so they fit.
    debug_assert!(text.kludges.len() <= usize::from(u16::MAX));
    debug_assert!(text.subject.len() <= usize::from(u16::MAX));
    w.extend_from_slice(&(text.kludges.len() as u16).to_le_bytes());
    w.extend_from_slice(&(text.subject.len() as u16).to_le_bytes());
    put_u32(w, text.body.len() as u32);
    w.extend_from_slice(&text.kludges);
    w.extend_from_slice(&text.subject);
    w.extend_from_slice(&text.body);
}

/// Reads a text in the shared layout.
///
/// # Errors
/// [`Error::Corrupt`] on a short buffer or a text over [`crate::MESSAGE_TEXT_BYTES_MAX`].
pub(crate) fn read_text(r: &mut Reader<'_>) -> Result<Text> {
    let kludges_len = usize::from(r.u16()?);
    let subject_len = usize::from(r.u16()?);
    let body_len = r.u32()? as usize;
    if kludges_len + subject_len + body_len > crate::MESSAGE_TEXT_BYTES_MAX {
        return Err(Error::corrupt_record(
            "text longer than MESSAGE_TEXT_BYTES_MAX",
        ));
    }
    Ok(Text {
        kludges: r.bytes(kludges_len)?.to_vec(),
        subject: r.bytes(subject_len)?.to_vec(),
        body: r.bytes(body_len)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let text = Text {
            kludges: b"\x01a b\t".to_vec(),
            subject: b"s".to_vec(),
            body: b"hi".to_vec(),
        };
        let records = [
            Record::Add {
                owner: 1,
                lid: 2,
                peer: -3,
                peer_lid: 4,
                flags: 5,
                text: text.clone(),
            },
            Record::Send {
                from: 1,
                from_lid: 2,
                from_flags: 3,
                to: 4,
                to_lid: 5,
                to_flags: 6,
                text: text.clone(),
            },
            Record::Flags {
                owner: 1,
                lid: 2,
                op: FlagOp::AndNot,
                value: 9,
            },
            Record::ReadUpto {
                owner: 1,
                peer: 2,
                lid: 0,
            },
            Record::Edit {
                owner: 1,
                lid: 2,
                text: text.clone(),
            },
            Record::Delete { owner: 1, lid: 2 },
            Record::DeleteDialog { owner: 1, peer: 2 },
            Record::Trim {
                owner: 1,
                min_lid: 7,
            },
            Record::Extra {
                owner: 1,
                lid: 2,
                field: 3,
                op: ExtraOp::Add,
                value: -5,
            },
            Record::Repost {
                owner: 1,
                lid: 2,
                author: 3,
                flags: 2,
                orig_owner: 4,
                orig_id: 5,
                text,
            },
        ];
        for record in records {
            let (kind, payload) = record.encode();
            assert_eq!(Record::decode(kind, &payload).unwrap(), record);
            assert!(Record::decode(kind, &payload[..payload.len() - 1]).is_err());
        }
        assert!(Record::decode(0x4dff, &[]).is_err());
    }
}
