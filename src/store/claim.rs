//! Claiming turns: a worker's membership in the partitions' consumer groups, and its reads of new
//! turns, returned as [`Delivery`]s.
//!
//! - On a single Redis, a [`TurnReader`] holds a connection of its own for one blocking
//!   XREADGROUP over every partition's stream.
//! - On a Cluster, where one read cannot span slots, [`Store::read_partition`] reads one partition
//!   without blocking, after its wake-up (see `worker::read_cluster`).
//!
//! A read that finds the groups gone (FLUSHALL, a failover that lost them) recreates them and
//! answers with nothing, so the caller simply reads again.

use fred::prelude::*;
use fred::types::config::Options;

use super::{Store, StoreError};
use crate::keys::GROUP;
use crate::settings_base::ms;

/// A turn handed to a worker, by XREADGROUP or by a reclaim.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub partition: u16,
    pub entry_id: String,
    pub base: String,
    pub turn_id: String,
    /// W3C trace context from the gateway that enqueued the turn.
    pub traceparent: Option<String>,
}

/// One blocking read over every partition, on a connection of its own (a blocked connection
/// serves nothing else).
pub struct TurnReader {
    client: Client,
    store: Store,
    streams: Vec<String>,
    /// `>` for each stream: only entries never delivered.
    ids: Vec<&'static str>,
    /// fred's client-side timeout does not end a server-side BLOCK, so it exceeds the BLOCK.
    opts: Options,
    block_ms: u64,
}

impl Store {
    /// Adds `consumer` to every partition's group at once: Redis 7.0 creates a consumer only when
    /// a read delivers something, and an idle worker should still show in XINFO CONSUMERS and ctl.
    pub async fn join_groups(&self, consumer: &str) -> Result<(), StoreError> {
        let joins = (0..self.keys.partitions()).map(|p| self.redis.create_consumer(self.keys.stream(p), consumer));
        futures::future::try_join_all(joins).await?;
        Ok(())
    }

    /// A reader that blocks up to `block_ms` per read (single Redis).
    pub async fn turn_reader(&self, block_ms: u64) -> Result<TurnReader, StoreError> {
        let client = self.redis.dedicated().await?;
        let opts = Options {
            timeout: Some(ms(block_ms) + ms(self.redis.settings().command_timeout_ms)),
            ..Default::default()
        };
        let streams: Vec<String> = (0..self.keys.partitions()).map(|p| self.keys.stream(p)).collect();
        let ids = vec![">"; streams.len()];
        Ok(TurnReader { client, store: self.clone(), streams, ids, opts, block_ms })
    }

    /// Up to `count` new turns of partition `p`, without blocking.
    pub async fn read_partition(&self, p: u16, consumer: &str, count: u64) -> Result<Vec<Delivery>, StoreError> {
        let stream = self.keys.stream(p);
        let reply = self
            .redis
            .client()
            .xreadgroup::<Value, _, _, _, _>(GROUP, consumer, Some(count), None, false, &stream, ">")
            .await;
        let streams = [stream];
        self.deliveries(reply, &streams, p).await
    }

    /// The deliveries of an XREADGROUP reply over `streams`, whose first is partition `first`.
    async fn deliveries(
        &self,
        reply: Result<Value, fred::error::Error>,
        streams: &[String],
        first: u16,
    ) -> Result<Vec<Delivery>, StoreError> {
        let value = match reply {
            Ok(v) if v.is_null() => return Ok(Vec::new()),
            Ok(v) => v,
            Err(e) if e.details().contains("NOGROUP") => {
                tracing::warn!("consumer groups missing; recreating them");
                self.ensure_schema().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let entries = value
            .into_xread_response::<String, String, String, String>()
            .map_err(|e| StoreError::Reply { function: "XREADGROUP", detail: e.to_string() })?;
        let mut out = Vec::new();
        for (stream, items) in entries {
            let Some(i) = streams.iter().position(|s| *s == stream) else { continue };
            for (entry_id, mut fields) in items {
                let (Some(base), Some(turn_id)) = (fields.remove("b"), fields.remove("t")) else {
                    // Left pending: the sweep dead-letters an entry whose turn cannot be named.
                    tracing::error!(%stream, %entry_id, "turn entry without base or turn id");
                    continue;
                };
                let traceparent = fields.remove("tp");
                out.push(Delivery { partition: first + i as u16, entry_id, base, turn_id, traceparent });
            }
        }
        Ok(out)
    }
}

impl TurnReader {
    /// Up to `count` new turns of each partition, waiting up to the reader's BLOCK for the first.
    pub async fn read(&self, consumer: &str, count: u64) -> Result<Vec<Delivery>, StoreError> {
        let reply = self
            .client
            .with_options(&self.opts)
            .xreadgroup::<Value, _, _, _, _>(
                GROUP,
                consumer,
                Some(count),
                Some(self.block_ms),
                false,
                self.streams.clone(),
                self.ids.clone(),
            )
            .await;
        self.store.deliveries(reply, &self.streams, 0).await
    }

    /// Ends a read still blocked on the server and closes the connection, each within a second.
    pub async fn close(self) {
        let wait = std::time::Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, self.client.unblock_self(None)).await;
        let _ = tokio::time::timeout(wait, self.client.quit()).await;
    }
}
