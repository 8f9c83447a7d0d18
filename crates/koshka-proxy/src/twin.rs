//! Writes the proxy carries out in several steps.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::conn::Outcome;
use crate::route::WritePlan;
use crate::Shared;

/// The durable queue of second halves.
#[derive(Debug, Default)]
pub struct Queue;

/// Starts a multi-step write.
pub fn start(
    _cluster: Arc<Cluster>,
    _shared: Arc<Shared>,
    _plan: WritePlan,
    _value: Vec<u8>,
    _flags: (u32, i64),
    _affinity: usize,
) -> JoinHandle<Outcome> {
    tokio::spawn(async { Outcome::reply(b"SERVER_ERROR not implemented\r\n".to_vec()) })
}

impl Queue {
    /// Opens (and replays) the queue.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(_config: &crate::config::TwinSection) -> std::io::Result<Queue> {
        Ok(Queue)
    }

    /// Flushes the queue file.
    pub fn flush(&self) {}
}

/// Starts the retry worker.
pub fn spawn_worker(_shared: Arc<Shared>) {}
