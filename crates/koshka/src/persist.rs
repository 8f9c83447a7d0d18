//! Adapts the binlog [`Host`] to the server's [`Persistence`] seam.

use std::future::Future;
use std::pin::Pin;

use koshka_binlog::Host;
use koshka_engine::{Journal, Stat};
use koshka_server::Persistence;

/// A persistence host as the server sees it.
pub struct HostPersistence(pub Host);

impl Persistence for HostPersistence {
    fn journal(&self) -> &dyn Journal {
        self.0.journal()
    }

    fn acked_pos(&self) -> u64 {
        self.0
            .binlog()
            .map_or(u64::MAX, koshka_binlog::Binlog::acked)
    }

    fn wait_acked(
        &self,
        pos: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.wait_acked(pos).await.map_err(|e| e.to_string()) })
    }

    fn request_snapshot(&self) -> String {
        if self.0.binlog().is_none() {
            return "durability none: nothing to snapshot".into();
        }
        self.0.request_snapshot();
        "started".into()
    }

    fn stats(&self) -> Vec<Stat> {
        self.0.stats()
    }

    fn shutdown(&self) -> Result<(), String> {
        self.0.shutdown().map_err(|e| e.to_string())
    }
}
