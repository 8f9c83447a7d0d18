//! The snapshot format: a header, then one frame per partition written under that
//! partition's lock, then a trailer. Derived indexes are not stored; they are rebuilt on load.
//!
//! This is still the format of the first engine (`KMSGSNP1`): each copy is written with its
//! own text, so a partition frame needs no other partition. On load the two copies of a send
//! (linked through `peer_lid`, with the same date and text) share one stored text again.
//! `tests/fixtures.rs` loads snapshots written by the first engine.
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

use std::collections::HashMap;

use crate::blob::Blob;
use crate::history::{Event, History};
use crate::ops::{put_i64, put_text, put_u32, read_text, Reader, Text};
use crate::search::Lexicon;
use crate::state::{Mailbox, Partition, REMOVED};
use crate::{Flavour, Layout, HISTORY_EVENTS_MAX, PARTITIONS};

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
        put_u32(w, mb.first_lid());
        put_u32(w, count(mb.slot_count()));
        for (_, slot) in mb.slots() {
            match &slot.blob {
                Some(blob) => {
                    put_i64(w, mb.peer(slot));
                    put_u32(w, slot.peer_lid);
                    put_u32(w, blob.date());
                    put_u32(w, slot.flags());
                    let [kludges, subject, body] = blob.to_parts();
                    put_text(
                        w,
                        &Text {
                            kludges,
                            subject,
                            body,
                        },
                    );
                }
                None => {
                    put_i64(w, 0);
                    put_u32(w, 0);
                    put_u32(w, 0);
                    put_u32(w, REMOVED);
                    put_text(w, &Text::default());
                }
            }
        }
        let empty = crate::state::More::default();
        let more = mb.more().unwrap_or(&empty);
        put_u32(w, count(more.extras.len()));
        for (&(lid, field), &value) in &more.extras {
            put_u32(w, lid);
            w.push(field);
            put_i64(w, value);
        }
        put_u32(w, count(more.origins.len()));
        for (&lid, &(owner, id)) in &more.origins {
            put_u32(w, lid);
            put_i64(w, owner);
            put_u32(w, id);
        }
        w.extend_from_slice(&mb.history.ts().to_le_bytes());
        put_u32(w, count(mb.history.len()));
        for e in mb.history.events() {
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

/// Decodes a whole snapshot into `(index, partition)` pairs, holding every copy's stems in
/// `lexicon` (which should be empty).
///
/// # Errors
/// [`Error::Corrupt`] (what = "snapshot") for a bad magic, flavour, count or a short frame.
pub fn decode(
    bytes: &[u8],
    flavour: Flavour,
    lexicon: &Lexicon,
    layout: &Layout,
) -> Result<Vec<(usize, Partition)>> {
    decode_inner(bytes, flavour, lexicon, layout).map_err(relabel)
}

/// Texts of copies whose twin has not been decoded yet: `(twin owner, twin lid)` → the text,
/// so the twin shares it.
type Twins = HashMap<(i64, u32), Blob>;

fn decode_inner(
    bytes: &[u8],
    flavour: Flavour,
    lexicon: &Lexicon,
    layout: &Layout,
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
    let mut twins = Twins::new();
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
            let mb = decode_mailbox(&mut r, owner, flavour, lexicon, layout, &mut twins)?;
            partition.mailboxes.insert(owner, mb);
        }
        out.push((index, partition));
    }
    if r.bytes(8)? != SNAPSHOT_TRAILER || !r.is_empty() {
        return Err(corrupt("missing trailer"));
    }
    Ok(out)
}

/// The stored text of a live copy: its twin's when the twin was decoded first with the same
/// date and text, a new one otherwise (left for the twin to share).
fn copy_text(
    key: ((i64, u32), (i64, u32)),
    date: u32,
    text: &Text,
    flavour: Flavour,
    lexicon: &Lexicon,
    twins: &mut Twins,
) -> Blob {
    let (me, twin) = key;
    let parts = [&text.kludges[..], &text.subject[..], &text.body[..]];
    if let Some(blob) = twins.remove(&me) {
        if blob.same_text(date, parts) {
            lexicon.hold(blob.terms(), 1);
            return blob;
        }
    }
    let terms = lexicon.hold_text(&[&text.subject, &text.body], 1);
    let blob = Blob::new(date, parts, &terms);
    if flavour == Flavour::Messages && twin.1 != 0 {
        twins.insert(twin, blob.clone());
    }
    blob
}

fn decode_mailbox(
    r: &mut Reader<'_>,
    owner: i64,
    flavour: Flavour,
    lexicon: &Lexicon,
    layout: &Layout,
    twins: &mut Twins,
) -> Result<Mailbox> {
    let mut mb = Mailbox::new(flavour);
    let first_lid = r.u32()?;
    mb.restore_first_lid(first_lid);
    let slots = r.u32()?;
    if slots > crate::MESSAGES_PER_MAILBOX_MAX {
        return Err(corrupt(format!("{slots} messages in one mailbox")));
    }
    for i in 0..slots {
        let (peer, peer_lid, date, flags) = (r.i64()?, r.u32()?, r.u32()?, r.u32()?);
        let text = read_text(r)?;
        if flags & REMOVED != 0 {
            mb.restore_slot(0, 0, 0, None);
            continue;
        }
        if u32::try_from(peer).is_err() || flags > crate::flags::USER_MASK {
            return Err(corrupt(format!(
                "message of mailbox {owner} with peer {peer} and flags {flags}"
            )));
        }
        let lid = first_lid.wrapping_add(i);
        let key = ((owner, lid), (peer, peer_lid));
        let blob = copy_text(key, date, &text, flavour, lexicon, twins);
        mb.restore_slot(peer, peer_lid, flags, Some(blob));
    }
    for _ in 0..r.u32()? {
        let (lid, field) = (r.u32()?, r.u8()?);
        mb.change_extra(lid, field, false, r.i64()?);
    }
    for _ in 0..r.u32()? {
        let lid = r.u32()?;
        mb.set_origin(lid, (r.i64()?, r.u32()?));
    }
    let ts = r.u64()?;
    let events = r.u32()? as usize;
    if events > HISTORY_EVENTS_MAX || events as u64 > ts {
        return Err(corrupt(format!(
            "{events} history events at timestamp {ts}"
        )));
    }
    let mut list = Vec::with_capacity(events);
    for _ in 0..events {
        list.push(Event {
            kind: r.u8()?,
            lid: r.u32()?,
            value: r.i64()?,
        });
    }
    mb.history = History::restore(ts, &list);
    mb.finish_restore(layout);
    Ok(mb)
}

/// Encodes the trailer.
#[must_use]
pub fn trailer() -> &'static [u8] {
    SNAPSHOT_TRAILER
}
