//! The snapshot format: a header, then one frame per partition written under that
//! partition's lock, then a trailer. Derived indexes are not stored; they are rebuilt on load.
//!
//! ```text
//! header:    "KMSGSNP1" | flavour u8 | partitions u32
//! partition: index u32 | pos u64 | mailboxes u32 | mailbox…
//! mailbox:   owner i64 | first_lid u32 | slots u32 | slot… |
//!            extras u32 | (lid u32, field u8, value i64)… |
//!            origins u32 | (lid u32, owner i64, id u32)… |
//!            history_ts u64 | events u32 | (kind u8, lid u32, value i64)…
//! slot:      peer i64 | peer_lid u32 | date u32 | flags u32 | text (see ops)
//! trailer:   "KMSGEND1"
//! ```

use koshka_engine::{Error, Result};

use crate::ops::{put_i64, put_text, put_u32, read_text, Reader, Text};
use crate::search::Lexicon;
use crate::state::{Event, History, Mailbox, Message, Partition};
use crate::{Flavour, HISTORY_EVENTS_MAX, PARTITIONS};

/// First bytes of a snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"KMSGSNP1";
/// Last bytes of a complete snapshot.
pub const SNAPSHOT_TRAILER: &[u8; 8] = b"KMSGEND1";

/// Encodes the header.
#[must_use]
pub fn encode_header(flavour: Flavour) -> Vec<u8> {
    let mut w = SNAPSHOT_MAGIC.to_vec();
    w.push(flavour.code());
    put_u32(&mut w, u32::try_from(PARTITIONS).unwrap_or(u32::MAX));
    w
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Encodes one partition frame.
pub fn encode_partition(index: u32, partition: &Partition, w: &mut Vec<u8>) {
    put_u32(w, index);
    w.extend_from_slice(&partition.pos.to_le_bytes());
    put_u32(w, count(partition.mailboxes.len()));
    let mut owners: Vec<&i64> = partition.mailboxes.keys().collect();
    owners.sort_unstable();
    for owner in owners {
        let mb = &partition.mailboxes[owner];
        put_i64(w, *owner);
        put_u32(w, mb.first_lid);
        put_u32(w, count(mb.messages.len()));
        for m in &mb.messages {
            put_i64(w, m.peer);
            put_u32(w, m.peer_lid);
            put_u32(w, m.date);
            put_u32(w, m.flags);
            let (kludges, subject, body) = if m.alive() {
                mb.text(m)
            } else {
                (&[][..], &[][..], &[][..])
            };
            put_text(
                w,
                &Text {
                    kludges: kludges.to_vec(),
                    subject: subject.to_vec(),
                    body: body.to_vec(),
                },
            );
        }
        put_u32(w, count(mb.extras.len()));
        for (&(lid, field), &value) in &mb.extras {
            put_u32(w, lid);
            w.push(field);
            put_i64(w, value);
        }
        put_u32(w, count(mb.origins.len()));
        for (&lid, &(owner, id)) in &mb.origins {
            put_u32(w, lid);
            put_i64(w, owner);
            put_u32(w, id);
        }
        w.extend_from_slice(&mb.history.ts.to_le_bytes());
        put_u32(w, count(mb.history.events.len()));
        for e in &mb.history.events {
            w.push(e.kind);
            put_u32(w, e.lid);
            put_i64(w, e.value);
        }
    }
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "snapshot",
        reason: reason.into(),
    }
}

fn relabel(e: Error) -> Error {
    match e {
        Error::Corrupt { reason, .. } => corrupt(reason),
        other => other,
    }
}

/// Decodes a whole snapshot into `(index, partition)` pairs.
///
/// # Errors
/// [`Error::Corrupt`] (what = "snapshot") for a bad magic, flavour, count or a short frame.
pub fn decode(
    bytes: &[u8],
    flavour: Flavour,
    lexicon: &Lexicon,
) -> Result<Vec<(usize, Partition)>> {
    decode_inner(bytes, flavour, lexicon).map_err(relabel)
}

fn decode_inner(
    bytes: &[u8],
    flavour: Flavour,
    lexicon: &Lexicon,
) -> Result<Vec<(usize, Partition)>> {
    let mut r = Reader::new(bytes, "messages snapshot");
    if r.bytes(8)? != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let code = r.u8()?;
    if code != flavour.code() {
        return Err(corrupt(format!(
            "flavour {code} but this engine is {}",
            flavour.name()
        )));
    }
    let partitions = r.u32()? as usize;
    if partitions != PARTITIONS {
        return Err(corrupt(format!(
            "{partitions} partitions, expected {PARTITIONS}"
        )));
    }
    let mut out = Vec::with_capacity(PARTITIONS);
    for _ in 0..PARTITIONS {
        let index = r.u32()? as usize;
        if index >= PARTITIONS || out.iter().any(|(i, _)| *i == index) {
            return Err(corrupt(format!("bad partition index {index}")));
        }
        let mut partition = Partition {
            pos: r.u64()?,
            ..Partition::default()
        };
        for _ in 0..r.u32()? {
            let owner = r.i64()?;
            let mb = decode_mailbox(&mut r, flavour, lexicon)?;
            partition.mailboxes.insert(owner, mb);
        }
        out.push((index, partition));
    }
    if r.bytes(8)? != SNAPSHOT_TRAILER || !r.is_empty() {
        return Err(corrupt("missing trailer"));
    }
    Ok(out)
}

fn decode_mailbox(r: &mut Reader<'_>, flavour: Flavour, lexicon: &Lexicon) -> Result<Mailbox> {
    let mut mb = Mailbox::new(flavour);
    mb.first_lid = r.u32()?;
    let slots = r.u32()?;
    if slots > crate::MESSAGES_PER_MAILBOX_MAX {
        return Err(corrupt(format!("{slots} messages in one mailbox")));
    }
    mb.messages.reserve(slots as usize);
    for _ in 0..slots {
        let mut m = Message {
            peer: r.i64()?,
            peer_lid: r.u32()?,
            date: r.u32()?,
            ..Message::default()
        };
        m.flags = r.u32()?;
        let text = read_text(r)?;
        m.text_off = u32::try_from(mb.arena.len()).map_err(|_| corrupt("arena too large"))?;
        m.kludges_len = u16::try_from(text.kludges.len()).unwrap_or(u16::MAX);
        m.subject_len = u16::try_from(text.subject.len()).unwrap_or(u16::MAX);
        m.body_len = u32::try_from(text.body.len()).unwrap_or(u32::MAX);
        mb.arena.extend_from_slice(&text.kludges);
        mb.arena.extend_from_slice(&text.subject);
        mb.arena.extend_from_slice(&text.body);
        if m.alive() {
            mb.live += 1;
        }
        mb.messages.push(m);
    }
    for _ in 0..r.u32()? {
        let key = (r.u32()?, r.u8()?);
        mb.extras.insert(key, r.i64()?);
    }
    for _ in 0..r.u32()? {
        let lid = r.u32()?;
        mb.origins.insert(lid, (r.i64()?, r.u32()?));
    }
    let ts = r.u64()?;
    let events = r.u32()? as usize;
    if events > HISTORY_EVENTS_MAX || events as u64 > ts {
        return Err(corrupt(format!(
            "{events} history events at timestamp {ts}"
        )));
    }
    let mut history = History {
        ts,
        events: Default::default(),
    };
    for _ in 0..events {
        history.events.push_back(Event {
            kind: r.u8()?,
            lid: r.u32()?,
            value: r.i64()?,
        });
    }
    mb.history = history;
    mb.arena.shrink_to_fit();
    mb.rebuild_indexes(lexicon);
    Ok(mb)
}

/// Encodes the trailer.
#[must_use]
pub fn trailer() -> &'static [u8] {
    SNAPSHOT_TRAILER
}
