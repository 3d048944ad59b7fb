//! Pub/sub connections: a subscriber that joins sharded channels slot by slot and tells its owner
//! when to join them again.
//!
//! The gateway's hub (session channels), the Cluster reader (partition wake-ups) and a worker's
//! control channel each hold one [`Subscriber`]. Resubscribing is their business, not the client
//! library's: fred 10.1's `resubscribe_all` first sends SUBSCRIBE with no channels, which Redis
//! refuses, and then never reaches the sharded channels (shared/notes/fred.md).

use std::collections::HashMap;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast;

pub use fred::types::Message;

use super::StoreError;

/// One pub/sub connection (one per node on a Cluster). Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Subscriber(SubscriberClient);

impl Subscriber {
    pub(super) fn new(client: SubscriberClient) -> Self {
        Self(client)
    }

    /// Every message on the channels this connection joined.
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.0.message_rx()
    }

    /// Fires when a connection came back: what it had joined is gone and must be joined again.
    pub fn reconnects(&self) -> broadcast::Receiver<fred::types::config::Server> {
        self.0.reconnect_rx()
    }

    /// Fires when the client library read the Cluster's slot map (announced on every read, so a
    /// caller compares [`Self::slot_map`]s to see a real change).
    pub fn topology_changes(&self) -> broadcast::Receiver<Vec<fred::types::ClusterStateChange>> {
        self.0.cluster_change_rx()
    }

    pub fn is_clustered(&self) -> bool {
        self.0.is_clustered()
    }

    /// SSUBSCRIBE to `channels`: one call on a single server; on a Cluster, which refuses
    /// channels of several slots in one call, one call per hash slot, all sent at once (fred
    /// pipelines them) so that a batch costs one round trip, not one per slot.
    pub async fn ssubscribe_by_slot(&self, channels: Vec<String>) -> Result<(), StoreError> {
        if channels.is_empty() {
            return Ok(());
        }
        if !self.0.is_clustered() {
            return Ok(self.0.ssubscribe(channels).await?);
        }
        let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
        for ch in channels {
            by_slot.entry(fred::util::redis_keyslot(ch.as_bytes())).or_default().push(ch);
        }
        let calls = by_slot.into_values().map(|chs| self.0.ssubscribe(chs));
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    pub async fn sunsubscribe(&self, channel: String) -> Result<(), StoreError> {
        Ok(self.0.sunsubscribe(channel).await?)
    }

    /// SUBSCRIBE to a classic (unsharded) channel: a worker's control channel.
    pub async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        Ok(self.0.subscribe(channel).await?)
    }

    /// Reads the Cluster's slot map again (no-op on a single server).
    pub async fn sync_cluster(&self) -> Result<(), StoreError> {
        Ok(self.0.sync_cluster().await?)
    }

    /// The slot ranges and their primaries, as the client library last read them (empty when not
    /// on a Cluster).
    pub fn slot_map(&self) -> Vec<(u16, u16, String)> {
        self.0
            .cached_cluster_state()
            .map(|s| s.slots().iter().map(|r| (r.start, r.end, r.primary.to_string())).collect())
            .unwrap_or_default()
    }

    pub async fn quit(&self) {
        let _ = self.0.quit().await;
    }
}
