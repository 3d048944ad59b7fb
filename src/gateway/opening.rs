//! A bound on the connections in their opening phase: from accept to the first response, or for
//! a WebSocket to its `welcome`.
//!
//! Opening a connection allocates far more than holding it: hyper's connection state and 8 KiB
//! read buffer, the request, `hello`'s parsing and the session open's futures. When a reconnect
//! storm opened thousands at once, those short-lived blocks sat among the long-lived ones of the
//! sockets already open, and the allocator kept the holes: an idle socket cost twice its live
//! heap in RSS, and more the more connects overlapped (docs/benchmarks.md). With at most
//! `gateway.max_opening_connections` opening at once, the others wait as accepted sockets (a
//! small task each, no buffers), in accept order, for at most `gateway.header_read_timeout_ms`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gateway's opening slots, shared by its accept loop and its handlers.
#[derive(Clone)]
pub(crate) struct Openings {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Openings {
    pub(crate) fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), waiting: Arc::default() }
    }

    /// Waits (in arrival order) for a slot, at most `patience`; `None` when the wait ran out.
    pub(crate) async fn enter(&self, patience: Duration) -> Option<OpeningSlot> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(patience, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        // The semaphore is never closed, so only the timeout fails.
        let permit = permit.ok()?.ok()?;
        Some(OpeningSlot(Arc::new(Mutex::new(Some(permit)))))
    }

    /// Connections accepted and waiting for a slot now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One connection's slot: released by its first response, or taken by a WebSocket handler that
/// releases it after `welcome`; in any case when the connection ends.
#[derive(Clone)]
pub(crate) struct OpeningSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl OpeningSlot {
    /// Takes the slot out, to be held past the response (a WebSocket until its `welcome`).
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Frees the slot if it is still held here.
    pub(crate) fn release(&self) {
        drop(self.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_opening_waits_for_the_first_to_release_its_slot() {
        let o = Openings::new(1);
        let first = o.enter(Duration::from_secs(5)).await.expect("a free slot");
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.enter(Duration::from_secs(5)).await.is_some() }
        });
        while o.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // A clone taken by a WebSocket handler keeps the slot after the response releases its own.
        let held = first.clone().take();
        first.release();
        assert_eq!(o.waiting(), 1, "the slot is still held by the handler");
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the released slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_patience_gives_up() {
        let o = Openings::new(1);
        let _first = o.enter(Duration::from_secs(5)).await.expect("a free slot");
        assert!(o.enter(Duration::from_millis(100)).await.is_none());
        assert_eq!(o.waiting(), 0);
    }
}
