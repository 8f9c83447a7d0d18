//! The bounded event ring of one mailbox, for real-time clients (`history<uid>#<ts>`).
//!
//! The newest [`HISTORY_EVENTS_MAX`] events, oldest first, each stored in a few bytes:
//!
//! ```text
//! +---------+---------+-------------------------+
//! | kind u8 | lid var | value var (zigzag i64)  |
//! +---------+---------+-------------------------+
//! ```
//!
//! A new-message event (kind 4, small flags) takes three or four bytes instead of the 16 of
//! a fixed `(u8, u32, i64)` struct. Event `i` of `n` has timestamp `ts - (n - 1 - i)`; `ts`
//! only grows.

use crate::blob::{get_var, put_var};
use crate::HISTORY_EVENTS_MAX;

/// One history event kind (VK numbering).
pub mod event {
    /// Message removed: `(lid, 0)`.
    pub const DELETED: u8 = 0;
    /// Flags replaced: `(lid, new flags)`.
    pub const FLAGS_SET: u8 = 1;
    /// Flags ORed: `(lid, mask)`.
    pub const FLAGS_ADDED: u8 = 2;
    /// Flags cleared: `(lid, mask)`.
    pub const FLAGS_CLEARED: u8 = 3;
    /// New message: `(lid, flags)`.
    pub const NEW: u8 = 4;
    /// Text edited: `(lid, 0)`.
    pub const EDITED: u8 = 5;
    /// Incoming messages read up to: `(lid, peer)`.
    pub const READ_UPTO: u8 = 6;
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Kind, see [`event`].
    pub kind: u8,
    /// Local id.
    pub lid: u32,
    /// Flags, mask or peer, by kind.
    pub value: i64,
}

/// The event ring; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Timestamp of the newest event (0 = none yet).
    ts: u64,
    /// Events in the ring.
    len: u16,
    /// The encoded events, oldest first.
    bytes: Vec<u8>,
}

const _: () = assert!(HISTORY_EVENTS_MAX <= u16::MAX as usize);

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

impl History {
    /// Timestamp of the newest event (0 = none yet).
    #[must_use]
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// Events in the ring.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when the ring holds no event.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes (capacity).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// A ring of `events` (oldest first) ending at timestamp `ts` (a snapshot's).
    ///
    /// # Panics
    /// If there are more than [`HISTORY_EVENTS_MAX`] events, or more than `ts` (the caller
    /// checks).
    #[must_use]
    pub fn restore(ts: u64, events: &[Event]) -> Self {
        assert!(events.len() <= HISTORY_EVENTS_MAX && events.len() as u64 <= ts);
        let mut ring = Self::default();
        for e in events {
            ring.append(*e);
        }
        ring.bytes.shrink_to_fit();
        ring.ts = ts;
        ring
    }

    fn append(&mut self, e: Event) {
        let need = self.bytes.len() + 16;
        if need > self.bytes.capacity() {
            // Grow by a quarter, not double: most rings stay small.
            let want = need.max(self.bytes.capacity() + self.bytes.capacity() / 4);
            self.bytes.reserve_exact(want - self.bytes.len());
        }
        self.bytes.push(e.kind);
        put_var(&mut self.bytes, u64::from(e.lid));
        put_var(&mut self.bytes, zigzag(e.value));
        self.len += 1;
    }

    /// Appends an event, dropping the oldest when the ring is full.
    pub fn push(&mut self, kind: u8, lid: u32, value: i64) {
        if self.len() == HISTORY_EVENTS_MAX {
            let first = Self::event_len(&self.bytes);
            self.bytes.drain(..first);
            self.len -= 1;
        }
        self.append(Event { kind, lid, value });
        self.ts += 1;
    }

    /// Encoded length of the event at the start of `bytes`.
    fn event_len(bytes: &[u8]) -> usize {
        let (_, lid) = get_var(&bytes[1..]);
        let (_, value) = get_var(&bytes[1 + lid..]);
        1 + lid + value
    }

    /// The events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let bytes = &self.bytes[at..];
            let kind = *bytes.first()?;
            let (lid, a) = get_var(&bytes[1..]);
            let (value, b) = get_var(&bytes[1 + a..]);
            at += 1 + a + b;
            Some(Event {
                kind,
                // NOTE: written from a u32.
                lid: lid as u32,
                value: unzigzag(value),
            })
        })
    }

    /// Events after cursor `ts`, at most `limit`, and the cursor after them; `None` when the
    /// cursor fell out of the ring (or is from the future) and the client must resync.
    #[must_use]
    pub fn since(&self, ts: u64, limit: usize) -> Option<(u64, impl Iterator<Item = Event> + '_)> {
        let oldest_cursor = self.ts - u64::from(self.len);
        if ts < oldest_cursor || ts > self.ts {
            return None;
        }
        let skip = usize::try_from(ts - oldest_cursor).ok()?;
        let taken = (self.len() - skip).min(limit);
        Some((ts + taken as u64, self.events().skip(skip).take(taken)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_and_resync() {
        let mut h = History::default();
        assert_eq!(h.since(0, 10).map(|(ts, e)| (ts, e.count())), Some((0, 0)));
        for i in 0..(HISTORY_EVENTS_MAX as u32 + 5) {
            h.push(event::NEW, i, -i64::from(i) * 1000);
        }
        assert!(h.since(0, 10).is_none());
        assert!(h.since(4, 10).is_none());
        let (ts, events) = h.since(5, 3).unwrap_or_else(|| panic!("in the ring"));
        let events: Vec<Event> = events.collect();
        assert_eq!((ts, events.len(), events[0].lid), (8, 3, 5));
        assert_eq!(events[2].value, -7000);
        assert!(h.since(h.ts() + 1, 3).is_none());
        assert_eq!(h.len(), HISTORY_EVENTS_MAX);
        let again = History::restore(h.ts(), &h.events().collect::<Vec<_>>());
        assert_eq!(
            again.events().collect::<Vec<_>>(),
            h.events().collect::<Vec<_>>()
        );
        assert_eq!(again.ts(), h.ts());
    }

    #[test]
    fn values_round_trip() {
        let mut h = History::default();
        for value in [0, 1, -1, i64::MAX, i64::MIN, 1 << 40] {
            h.push(event::READ_UPTO, u32::MAX, value);
        }
        let values: Vec<i64> = h.events().map(|e| e.value).collect();
        assert_eq!(values, [0, 1, -1, i64::MAX, i64::MIN, 1 << 40]);
    }
}
