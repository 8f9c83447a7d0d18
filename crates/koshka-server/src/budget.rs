//! The node-wide budget for replies queued to clients that do not read them.
//!
//! A connection whose reply cannot be written at once (the client's socket buffer is full)
//! *holds* its output buffer until the client reads. Each connection is bounded by
//! `output_buffer_max`, but many slow or malicious clients together could still hold
//! gigabytes. The budget bounds the sum: when a new holder pushes the total past
//! `[server] output_budget`, the connection holding the most is closed (a log line and the
//! `output_budget_closed` stat record it), so one node's memory stays bounded whatever its
//! clients do. Replies written at once are never counted: the budget costs nothing on the hot
//! path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Default node-wide budget for replies held by clients that do not read (256 MiB).
pub const OUTPUT_BUDGET_DEFAULT: u64 = 256 * 1024 * 1024;

/// One connection's standing with the budget.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    closing: Arc<Closing>,
}

/// Set when the budget closes a connection; the connection's pending write watches it.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    flag: AtomicBool,
    notify: Notify,
}

impl Closing {
    /// Resolves once the budget has chosen this connection to close.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct Holder {
    bytes: usize,
    closing: Arc<Closing>,
}

/// The budget; see the module docs.
#[derive(Debug)]
pub struct OutputBudget {
    max: usize,
    held: AtomicUsize,
    next_id: AtomicU64,
    holders: Mutex<HashMap<u64, Holder>>,
    closed: AtomicU64,
}

impl OutputBudget {
    /// A budget of `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            holders: Mutex::new(HashMap::new()),
            closed: AtomicU64::new(0),
        }
    }

    /// Bytes held right now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The budget.
    #[must_use]
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections closed to stay within the budget since start.
    #[must_use]
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            closing: Arc::new(Closing::default()),
        }
    }

    pub(crate) fn closing<'t>(&self, ticket: &'t Ticket) -> &'t Closing {
        &ticket.closing
    }

    /// Records that `ticket` holds `bytes` until [`OutputBudget::release`]; closes the
    /// biggest holders while the total is over the budget.
    pub(crate) fn hold(&self, ticket: &Ticket, bytes: usize) {
        let Ok(mut holders) = self.holders.lock() else {
            return;
        };
        holders.insert(
            ticket.id,
            Holder {
                bytes,
                closing: ticket.closing.clone(),
            },
        );
        let mut total = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        while total > self.max {
            let Some((&id, _)) = holders
                .iter()
                .filter(|(_, h)| !h.closing.flag.load(Ordering::Relaxed))
                .max_by_key(|(_, h)| h.bytes)
            else {
                break;
            };
            let Some(victim) = holders.get(&id) else {
                break;
            };
            tracing::warn!(
                "closing a connection holding {} bytes of unread replies: the node's output \
                 budget of {} bytes is exceeded",
                victim.bytes,
                self.max
            );
            victim.closing.flag.store(true, Ordering::Release);
            victim.closing.notify.notify_one();
            self.closed.fetch_add(1, Ordering::Relaxed);
            total = total.saturating_sub(victim.bytes);
        }
    }

    /// Ends what [`OutputBudget::hold`] recorded.
    pub(crate) fn release(&self, ticket: &Ticket) {
        let Ok(mut holders) = self.holders.lock() else {
            return;
        };
        if let Some(holder) = holders.remove(&ticket.id) {
            self.held.fetch_sub(holder.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_holder_is_closed_past_the_budget() {
        let budget = OutputBudget::new(100);
        let (a, b, c) = (budget.ticket(), budget.ticket(), budget.ticket());
        budget.hold(&a, 60);
        budget.hold(&b, 30);
        assert_eq!(budget.closed(), 0);
        budget.hold(&c, 20);
        assert!(a.closing.flag.load(Ordering::Relaxed), "the biggest goes");
        assert!(!b.closing.flag.load(Ordering::Relaxed));
        assert!(!c.closing.flag.load(Ordering::Relaxed));
        assert_eq!(budget.closed(), 1);
        budget.release(&a);
        budget.release(&b);
        budget.release(&c);
        assert_eq!(budget.held(), 0);
    }
}
