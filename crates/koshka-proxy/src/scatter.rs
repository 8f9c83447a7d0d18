//! Scatter/gather for friends keys whose owners live on several shards.

use std::sync::Arc;

use koshka_keys::friends::GetKey;

use crate::cluster::Cluster;
use crate::conn::{Part, PartFuture, Session};
use crate::Shared;

/// Answers a friends key over several shards.
pub fn friends(
    _cluster: Arc<Cluster>,
    _shared: Arc<Shared>,
    _key: Vec<u8>,
    _get: GetKey,
    _session: &Session,
) -> PartFuture {
    Box::pin(std::future::ready(Part::Missed))
}
