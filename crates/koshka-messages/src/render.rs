//! Answers rendered straight into the connection's output buffer: count-prefixed id lists,
//! the dialogs list, history, search results and message JSON (keys in alphabetical order,
//! byte for byte what clients have always seen). Nothing here allocates per reply, except a
//! search's working lists and an oldest-first conversation page.

use koshka_keys::messages::mode;
use koshka_keys::Slice;

use crate::blob::escape_str;
use crate::search::Lexicon;
use crate::state::{in_sublist, Mailbox, Slot};
use crate::{Flavour, PAGE_SIZE_MAX};

/// Appends a decimal number.
pub fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(n).as_bytes());
}

/// Appends `,<n>`.
fn item(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.push(b',');
    number(out, n);
}

/// The first and last position a slice selects (in reply order), truncated to
/// [`PAGE_SIZE_MAX`] items; `None` when it selects nothing. Positions are contiguous.
fn span(slice: Slice, len: usize) -> Option<(usize, usize)> {
    let mut positions = slice.positions(len).take(PAGE_SIZE_MAX);
    let first = positions.next()?;
    Some((first, positions.last().unwrap_or(first)))
}

/// `total,id,…` of a slice of an ascending list.
pub fn page(out: &mut Vec<u8>, list: &[u32], slice: Slice) {
    number(out, list.len());
    for i in slice.positions(list.len()).take(PAGE_SIZE_MAX) {
        item(out, list[i]);
    }
}

/// `total,lid,…` of a slice of the sublist `(and, xor)`, by scanning the flags from the end
/// the slice reads.
pub fn sublist(out: &mut Vec<u8>, mb: &Mailbox, (and, xor): (u32, u32), slice: Slice) {
    let member = |(_, s): &(u32, &Slot)| in_sublist(s.flags(), and, xor);
    let total = mb.slots().filter(member).count();
    number(out, total);
    let Some((first, last)) = span(slice, total) else {
        return;
    };
    if first > last {
        // Newest first: position of the k-th member from the end is total - 1 - k.
        let skip = total - 1 - first;
        for (lid, _) in mb
            .slots()
            .rev()
            .filter(member)
            .skip(skip)
            .take(first - last + 1)
        {
            item(out, lid);
        }
    } else {
        for (lid, _) in mb.slots().filter(member).skip(first).take(last - first + 1) {
            item(out, lid);
        }
    }
}

/// The 1-based position of `lid` in the sublist `(and, xor)`; false if not in it.
pub fn sublist_position(out: &mut Vec<u8>, mb: &Mailbox, (and, xor): (u32, u32), lid: u32) -> bool {
    if !mb.get(lid).is_some_and(|s| in_sublist(s.flags(), and, xor)) {
        return false;
    }
    let position = mb
        .slots()
        .take_while(|&(l, _)| l <= lid)
        .filter(|(_, s)| in_sublist(s.flags(), and, xor))
        .count();
    number(out, position);
    true
}

/// `total,lid,…` of a slice of the conversation with `peer`: newest-first pages walk the
/// conversation from its newest message and stop at the page's end.
pub fn conversation(out: &mut Vec<u8>, mb: &Mailbox, peer: i64, slice: Slice) {
    let Some(dialog) = mb.dialog(peer) else {
        number(out, 0);
        return;
    };
    let total = dialog.count as usize;
    number(out, total);
    let Some((first, last)) = span(slice, total) else {
        return;
    };
    // Chain index j (0 = newest) is position total - 1 - j.
    let (lo, hi) = (first.min(last), first.max(last));
    let page = mb
        .conversation(dialog)
        .skip(total - 1 - hi)
        .take(hi - lo + 1);
    if first > last {
        for lid in page {
            item(out, lid);
        }
    } else {
        let lids: smallvec::SmallVec<[u32; 64]> = page.collect();
        for &lid in lids.iter().rev() {
            item(out, lid);
        }
    }
}

/// The 1-based position of `lid` in the conversation with `peer`; false if not in it.
pub fn conversation_position(out: &mut Vec<u8>, mb: &Mailbox, peer: i64, lid: u32) -> bool {
    let Some(dialog) = mb.dialog(peer) else {
        return false;
    };
    match mb.conversation(dialog).position(|l| l == lid) {
        Some(j) => {
            number(out, dialog.count as usize - j);
            true
        }
        None => false,
    }
}

/// `total,(lid,peer,unread)…` of the dialogs list (position 1 = the oldest dialog), walking
/// the list from the end the slice reads.
pub fn dialogs(out: &mut Vec<u8>, mb: &Mailbox, slice: Slice) {
    let total = mb.dialogs_live();
    number(out, total);
    let Some((first, last)) = span(slice, total) else {
        return;
    };
    let (lo, hi) = (first.min(last), first.max(last));
    let mut write = |d: &crate::state::Dialog| {
        item(out, d.last);
        item(out, d.peer);
        item(out, d.unread);
    };
    if first > last {
        mb.dialogs_newest_first()
            .skip(total - 1 - hi)
            .take(hi - lo + 1)
            .for_each(&mut write);
    } else {
        mb.dialogs_oldest_first()
            .skip(lo)
            .take(hi - lo + 1)
            .for_each(&mut write);
    }
}

/// `new_ts,(kind,lid,value)…` or `resync,<ts>`.
pub fn history(out: &mut Vec<u8>, mb: &Mailbox, ts: u64, limit: usize) {
    match mb.history.since(ts, limit) {
        None => {
            out.extend_from_slice(b"resync,");
            number(out, mb.history.ts());
        }
        Some((new_ts, events)) => {
            number(out, new_ts);
            for e in events {
                item(out, e.kind);
                item(out, e.lid);
                item(out, e.value);
            }
        }
    }
}

/// A search's filters.
#[derive(Debug, Clone, Copy)]
pub struct SearchFilter {
    /// Sublist `(and, xor)`.
    pub mask: (u32, u32),
    /// Only this peer (0 = any).
    pub peer: i64,
    /// Dates from (inclusive).
    pub min_date: u32,
    /// Dates to (inclusive; 0 = no bound).
    pub max_date: u32,
}

/// `total,lid…` newest first; deleted messages never match. The total is only known at the
/// end, so the ids are collected first (at most `limit`).
pub fn search(
    out: &mut Vec<u8>,
    mb: &Mailbox,
    lexicon: &Lexicon,
    filter: &SearchFilter,
    limit: usize,
    words: &[u8],
) {
    let mut total = 0usize;
    let mut ids: smallvec::SmallVec<[u32; 32]> = smallvec::SmallVec::new();
    let query = lexicon.query(words).unwrap_or_default();
    let dated = filter.min_date != 0 || filter.max_date != 0;
    mb.search(&query, |lid, slot| {
        // Flags and peer are in the slot; the date only in the text, read when filtered on.
        let flags = slot.flags();
        let visible = flags & crate::flags::DELETED == 0
            && in_sublist(flags, filter.mask.0, filter.mask.1)
            && (filter.peer == 0 || mb.peer(slot) == filter.peer)
            && (!dated || {
                let date = slot.date();
                date >= filter.min_date && (filter.max_date == 0 || date <= filter.max_date)
            });
        if visible {
            total += 1;
            if total <= limit {
                ids.push(lid);
            }
        }
        true
    });
    number(out, total);
    for lid in ids {
        item(out, lid);
    }
}

/// Appends `"<name>":`.
fn key(out: &mut Vec<u8>, name: &str, first: &mut bool) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The JSON form of one message, rendered straight into `out`. Keys are in sorted order, the
/// order clients have always seen.
pub fn message(
    out: &mut Vec<u8>,
    flavour: Flavour,
    mb: &Mailbox,
    lid: u32,
    slot: &Slot,
    mode_bits: u32,
    max_len: Option<usize>,
) {
    let Some(blob) = &slot.blob else {
        return;
    };
    let (kludges, subject, body) = blob.parts();
    let first = &mut true;
    out.push(b'{');
    if flavour == Flavour::Wall {
        key(out, "author", first);
        number(out, mb.peer(slot));
    }
    key(out, "date", first);
    number(out, blob.date());
    if mode_bits & mode::EXTRAS != 0 {
        key(out, "extra", first);
        extras(out, mb, lid);
    }
    key(out, "flags", first);
    number(out, slot.flags());
    key(out, "id", first);
    number(out, lid);
    if mode_bits & mode::KLUDGES != 0 {
        key(out, "kludges", first);
        kludges.write_json(out, None);
    }
    match flavour {
        Flavour::Messages => {
            key(out, "peer", first);
            number(out, mb.peer(slot));
            key(out, "peer_msg_id", first);
            number(out, slot.peer_lid);
        }
        Flavour::Wall => {
            if let Some((owner, id)) = mb.more().and_then(|m| m.origins.get(&lid)) {
                key(out, "origin", first);
                out.extend_from_slice(b"{\"id\":");
                number(out, *id);
                out.extend_from_slice(b",\"owner\":");
                number(out, *owner);
                out.push(b'}');
            }
            if slot.peer_lid != 0 {
                key(out, "reply_to", first);
                number(out, slot.peer_lid);
            }
        }
    }
    if mode_bits & mode::NO_TEXT == 0 {
        key(out, "subject", first);
        subject.write_json(out, None);
        key(out, "text", first);
        body.write_json(out, max_len);
    }
    out.push(b'}');
}

/// `{"<field>":<value>,…}` of a message's extra fields, fields in text order (as JSON object
/// keys always were).
fn extras(out: &mut Vec<u8>, mb: &Mailbox, lid: u32) {
    let mut fields: smallvec::SmallVec<[(u8, i64); 8]> = mb
        .more()
        .map(|m| {
            m.extras
                .range((lid, 0)..=(lid, u8::MAX))
                .map(|((_, k), v)| (*k, *v))
                .collect()
        })
        .unwrap_or_default();
    // Field numbers are below 10 (`EXTRA_FIELDS`), so numeric order is text order; sorted
    // as text anyway, to keep the rule where it is stated.
    fields.sort_unstable_by_key(|&(k, _)| {
        let mut digits = itoa::Buffer::new();
        let s = digits.format(k);
        let mut key = [0u8; 3];
        key[..s.len()].copy_from_slice(s.as_bytes());
        key
    });
    out.push(b'{');
    for (i, (field, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        number(out, *field);
        out.extend_from_slice(b"\":");
        number(out, *value);
    }
    out.push(b'}');
}

/// Appends `text` as a JSON string (for answers built from strings, not stored texts).
pub fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape_str(out, text);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_positions() {
        let newest = Slice::Range { from: -1, to: -20 };
        assert_eq!(span(newest, 5), Some((4, 0)));
        assert_eq!(span(newest, 0), None);
        assert_eq!(span(Slice::Range { from: 2, to: 3 }, 5), Some((1, 2)));
        assert_eq!(span(Slice::Range { from: 0, to: 0 }, 5), None);
        let mut out = Vec::new();
        json_string(&mut out, "a\"b");
        assert_eq!(out, br#""a\"b""#);
    }
}
