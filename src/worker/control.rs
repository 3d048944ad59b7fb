//! Stop requests pushed to this worker.
//!
//! `cancel_turn` sets the turn's cancel flag (the truth, seen by the next `emit` or `heartbeat`)
//! and publishes the turn on this worker's control channel. The push lets a silent model be
//! stopped within milliseconds instead of at the next heartbeat. A lost push only costs latency.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::store::{Store, StoreError, Subscriber};

pub(super) struct Listener {
    sub: Subscriber,
    channel: String,
}

impl Listener {
    pub async fn connect(store: &Store, worker_id: &str) -> Result<Self, StoreError> {
        let sub = store.redis().subscriber().await?;
        let channel = format!("{}{}", store.keys().worker_channel_prefix(), worker_id);
        sub.subscribe(&channel).await?;
        Ok(Self { sub, channel })
    }

    pub async fn run(self, shared: Arc<Shared>, stop: CancellationToken) {
        let mut rx = self.sub.messages();
        let mut reconnects = self.sub.reconnects();
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = reconnects.recv() => {
                    // Subscribe again ourselves: fred's resubscribe_all fails on the empty
                    // pattern set. A push lost in between is covered by the cancel flag.
                    if let Err(e) = self.sub.subscribe(&self.channel).await {
                        tracing::warn!(error = %e, "control channel resubscribe failed");
                    }
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            match msg {
                Ok(m) => {
                    let Some(text) = m.value.as_string() else { continue };
                    let turn_id = text.rsplit('\n').next().unwrap_or_default();
                    shared.request_stop(turn_id);
                }
                // A lagged receiver lost pushes; the flags still stop those turns.
                Err(RecvError::Lagged(n)) => tracing::warn!(lost = n, "control channel lagged"),
                Err(RecvError::Closed) => break,
            }
        }
        self.sub.quit().await;
    }
}

impl Shared {
    /// Stops a running turn of this worker, if it is here.
    pub(super) fn request_stop(&self, turn_id: &str) {
        let signals = self.running.lock().ok().and_then(|m| m.get(turn_id).cloned());
        if let Some(s) = signals {
            s.mark_cancel_requested();
            s.cancel.cancel();
        }
    }
}
