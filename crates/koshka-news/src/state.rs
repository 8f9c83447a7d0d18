//! Authors, inboxes, partitions and garbage collection.
//!
//! An [`Author`] keeps its events in one vector ascending by `(date, id)` (new events are
//! appended: log time does not go back), its type mask and the next event id. An [`Inbox`]
//! keeps a recipient's notifications the same way, plus the senders it hides. A
//! [`Partition`] holds both in ordered maps, so the garbage-collection sweep visits them in
//! a deterministic order: replay reaches exactly the state the live engine had.

use std::collections::BTreeMap;
use std::ops::Bound;

use koshka_engine::Positioned;

use crate::records::What;
use crate::SWEEP_PER_WRITE;

/// One stored event (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Log time of the write.
    pub date: u32,
    /// Id, unique among the author's stored events, increasing.
    pub id: u32,
    /// What happened.
    pub what: What,
}

/// One author's events and mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// Events ascending by `(date, id)`.
    pub events: Vec<Event>,
    /// Types hidden from friends (bit 0 always set).
    pub mask: u32,
    /// The id of the next event.
    pub next_id: u32,
}

impl Default for Author {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            mask: 1,
            next_id: 1,
        }
    }
}

/// One stored notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// Log time of the write.
    pub date: u32,
    /// Id, unique among the recipient's notifications, increasing.
    pub id: u32,
    /// Hidden by the recipient.
    pub hidden: bool,
    /// What happened (`group` unused).
    pub what: What,
}

/// One recipient's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    /// Notifications ascending by `(date, id)`.
    pub items: Vec<Notification>,
    /// Senders whose notifications are hidden, ascending.
    pub hidden_users: Vec<i32>,
    /// The id of the next notification.
    pub next_id: u32,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            hidden_users: Vec::new(),
            next_id: 1,
        }
    }
}

/// The caps and window applied on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Retention window in seconds.
    pub window: u32,
    /// Events kept per author.
    pub events_max: usize,
    /// Notifications kept per recipient.
    pub notifications_max: usize,
}

/// Drops the items older than `cutoff` (a prefix) and then the oldest beyond `max`.
fn trim<T>(items: &mut Vec<T>, date: impl Fn(&T) -> u32, cutoff: u32, max: usize) {
    let expired = items.partition_point(|e| date(e) < cutoff);
    let over = (items.len() - expired).saturating_sub(max);
    let drop = expired + over;
    if drop > 0 {
        items.drain(..drop);
    }
}

/// Inserts `item` keeping `(date, id)` order (at the end unless the clock went back).
fn insert_sorted<T>(items: &mut Vec<T>, item: T, key: impl Fn(&T) -> (u32, u32)) {
    let k = key(&item);
    if items.last().is_none_or(|last| key(last) <= k) {
        items.push(item);
    } else {
        let at = items.partition_point(|e| key(e) <= k);
        items.insert(at, item);
    }
}

/// One partition.
#[derive(Debug, Default)]
pub struct Partition {
    /// Log position of the last record applied.
    pub pos: u64,
    /// Authors by id.
    pub authors: BTreeMap<i32, Author>,
    /// Inboxes by recipient.
    pub inboxes: BTreeMap<i32, Inbox>,
    /// The last author the sweep visited.
    pub sweep_author: i32,
    /// The last inbox the sweep visited.
    pub sweep_inbox: i32,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

/// The next key after `last` in `map`, wrapping around.
fn next_key<V>(map: &BTreeMap<i32, V>, last: i32) -> Option<i32> {
    map.range((Bound::Excluded(last), Bound::Unbounded))
        .next()
        .or_else(|| map.iter().next())
        .map(|(k, _)| *k)
}

impl Partition {
    /// Adds an event of `author` at `time`, after dropping its expired events and before
    /// applying the cap; then sweeps a few other authors and inboxes.
    pub fn add_event(&mut self, author: i32, what: What, time: u32, limits: Limits) {
        let cutoff = time.saturating_sub(limits.window);
        let a = self.authors.entry(author).or_default();
        let id = a.next_id;
        a.next_id = a.next_id.wrapping_add(1);
        insert_sorted(
            &mut a.events,
            Event {
                date: time,
                id,
                what,
            },
            |e| (e.date, e.id),
        );
        trim(&mut a.events, |e| e.date, cutoff, limits.events_max);
        self.sweep(cutoff, limits);
    }

    /// Adds a notification for `user` at `time`; as [`Partition::add_event`].
    pub fn add_notification(&mut self, user: i32, what: What, time: u32, limits: Limits) {
        let cutoff = time.saturating_sub(limits.window);
        let inbox = self.inboxes.entry(user).or_default();
        let id = inbox.next_id;
        inbox.next_id = inbox.next_id.wrapping_add(1);
        let item = Notification {
            date: time,
            id,
            hidden: false,
            what,
        };
        insert_sorted(&mut inbox.items, item, |n| (n.date, n.id));
        trim(
            &mut inbox.items,
            |n| n.date,
            cutoff,
            limits.notifications_max,
        );
        self.sweep(cutoff, limits);
    }

    /// Drops expired events of the next [`SWEEP_PER_WRITE`] authors and inboxes after the
    /// sweep cursors. Authors and inboxes themselves stay (their ids keep increasing).
    fn sweep(&mut self, cutoff: u32, limits: Limits) {
        for _ in 0..SWEEP_PER_WRITE {
            let Some(id) = next_key(&self.authors, self.sweep_author) else {
                break;
            };
            self.sweep_author = id;
            if let Some(a) = self.authors.get_mut(&id) {
                trim(&mut a.events, |e| e.date, cutoff, limits.events_max);
                if a.events.capacity() > 2 * a.events.len() + 4 {
                    a.events.shrink_to_fit();
                }
            }
        }
        for _ in 0..SWEEP_PER_WRITE {
            let Some(id) = next_key(&self.inboxes, self.sweep_inbox) else {
                break;
            };
            self.sweep_inbox = id;
            if let Some(inbox) = self.inboxes.get_mut(&id) {
                trim(
                    &mut inbox.items,
                    |n| n.date,
                    cutoff,
                    limits.notifications_max,
                );
                if inbox.items.capacity() > 2 * inbox.items.len() + 4 {
                    inbox.items.shrink_to_fit();
                }
            }
        }
    }

    /// Sets an author's mask (bit 0 forced).
    pub fn set_mask(&mut self, author: i32, mask: u32) {
        self.authors.entry(author).or_default().mask = mask | 1;
    }

    /// Hides or shows one notification; returns whether it changed.
    pub fn hide(&mut self, user: i32, id: u32, show: bool) -> bool {
        let Some(n) = self
            .inboxes
            .get_mut(&user)
            .and_then(|i| i.items.iter_mut().find(|n| n.id == id))
        else {
            return false;
        };
        let changed = n.hidden == show;
        n.hidden = !show;
        changed
    }

    /// Hides or shows a sender; returns whether it changed.
    pub fn hide_user(&mut self, user: i32, from: i32, show: bool) -> bool {
        let inbox = self.inboxes.entry(user).or_default();
        match (inbox.hidden_users.binary_search(&from), show) {
            (Ok(at), true) => {
                inbox.hidden_users.remove(at);
                true
            }
            (Err(at), false) => {
                inbox.hidden_users.insert(at, from);
                true
            }
            _ => false,
        }
    }

    /// Heap bytes, approximately.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let authors: usize = self
            .authors
            .values()
            .map(|a| a.events.capacity() * size_of::<Event>() + size_of::<Author>() + 16)
            .sum();
        let inboxes: usize = self
            .inboxes
            .values()
            .map(|i| {
                i.items.capacity() * size_of::<Notification>()
                    + i.hidden_users.capacity() * 4
                    + size_of::<Inbox>()
                    + 16
            })
            .sum();
        authors + inboxes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        window: 100,
        events_max: 3,
        notifications_max: 2,
    };

    fn what(kind: u8) -> What {
        What {
            kind,
            ..What::default()
        }
    }

    #[test]
    fn writes_expire_and_cap() {
        assert_eq!(size_of::<Event>(), 32);
        let mut p = Partition::default();
        for t in [10, 20, 30, 40] {
            p.add_event(5, what(1), t, LIMITS);
        }
        let ids: Vec<u32> = p.authors[&5].events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 3, 4], "the cap drops the oldest");
        p.add_event(5, what(1), 135, LIMITS);
        let dates: Vec<u32> = p.authors[&5].events.iter().map(|e| e.date).collect();
        assert_eq!(
            dates,
            vec![40, 135],
            "the window drops what is older than 35"
        );
        // Another author's write sweeps author 5.
        p.add_event(6, what(1), 500, LIMITS);
        assert!(p.authors[&5].events.is_empty());
        assert_eq!(p.authors[&5].next_id, 6);
        // A clock that went back still keeps the order.
        p.add_event(6, what(2), 450, LIMITS);
        let dates: Vec<u32> = p.authors[&6].events.iter().map(|e| e.date).collect();
        assert_eq!(dates, vec![450, 500]);
    }

    #[test]
    fn notifications_hide_and_show() {
        let mut p = Partition::default();
        p.add_notification(1, what(3), 10, LIMITS);
        assert!(p.hide(1, 1, false));
        assert!(!p.hide(1, 1, false));
        assert!(p.hide(1, 1, true));
        assert!(!p.hide(1, 9, false));
        assert!(p.hide_user(1, 7, false));
        assert!(!p.hide_user(1, 7, false));
        assert!(p.hide_user(1, 7, true));
    }
}
