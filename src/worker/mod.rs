//! The worker: a consumer-group member that claims turns and runs them.
//!
//! Tasks of one worker process:
//! - the **reader** ([`read`]): one dedicated Redis client blocked in XREADGROUP over the
//!   partition streams (a BLOCK holds its connection, so nothing else shares that client); in
//!   Redis Cluster, wake-ups per partition instead ([`read_cluster`]);
//! - one **turn** task per claimed turn ([`turn`]), bounded by `worker.max_concurrent_turns`;
//! - the **sweeper** ([`sweep`]): on a timer, takes over turns whose lease expired;
//! - the **control listener** ([`control`]): receives stop requests pushed by `cancel_turn`;
//! - the **queue exporter** ([`exporter`]): per-partition gauges, from one elected worker.
//!
//! Shutdown (drain): stop claiming, let running turns finish until `worker.drain_timeout_ms`,
//! then release the rest so another worker takes them over at once, then leave the consumer
//! group where nothing is pending.

pub mod coalesce;
mod control;
mod exporter;
mod read;
mod read_cluster;
mod sweep;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::Model;
use crate::settings::Settings;
use crate::settings_base::ms;
pub use crate::store::Delivery;
use crate::store::{Store, StoreError, Subscriber, TurnReader};

/// Stop signals of one running turn.
#[derive(Clone)]
struct TurnSignals {
    /// The user asked to stop.
    cancel: CancellationToken,
    /// Set when the stop request arrived (for the stop-latency metric).
    cancel_at: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl TurnSignals {
    /// Records when this worker learned of a stop request (the first time only).
    fn mark_cancel_requested(&self) {
        if let Ok(mut at) = self.cancel_at.lock() {
            at.get_or_insert_with(tokio::time::Instant::now);
        }
    }
}

/// State shared by a worker's tasks.
struct Shared {
    id: String,
    settings: Settings,
    store: Store,
    model: Arc<dyn Model>,
    /// Tools the model may call (`[tools]`).
    tools: Arc<crate::tools::ToolBox>,
    /// Redaction and moderation policies by tenant (`[guard]`).
    guard: crate::guard::Guard,
    /// Frees an ended turn's quota slot (the tenant's quota, `[quota]`).
    quotas: crate::quota::Quotas,
    /// Searches knowledge collections at packing time (`[retrieval]`, with an archive).
    retrieval: Option<crate::retrieval::Retriever>,
    permits: Arc<Semaphore>,
    /// Running turns by turn id. A std mutex: never held across an await.
    running: Mutex<HashMap<String, TurnSignals>>,
    /// Fired when the drain deadline passes: running turns release themselves.
    release: CancellationToken,
    tracker: TaskTracker,
}

/// A running worker.
pub struct Worker {
    id: String,
    done: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Starts a worker. It runs until `shutdown` fires, then drains.
    pub async fn start(
        settings: Settings,
        store: Store,
        model: Arc<dyn Model>,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let id = format!("w-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        // Standalone: one blocking read over every partition. Cluster: wake-ups per partition.
        let reader = if store.redis().is_clustered() {
            Reader::Cluster(store.redis().subscriber().await?)
        } else {
            Reader::Blocking(Box::new(store.turn_reader(settings.worker.read_block_ms).await?))
        };
        store.join_groups(&id).await?;
        let control = control::Listener::connect(&store, &id).await?;
        metrics::gauge!(crate::metrics::WORKER_CAPACITY).set(settings.worker.max_concurrent_turns as f64);
        let tools = Arc::new(crate::tools::ToolBox::new(&settings.tools));
        // The archive URL was validated at start; a pool connects on first use.
        let retrieval = crate::retrieval::Retriever::new(&settings).unwrap_or_else(|e| {
            tracing::error!(error = %e, "retrieval is off: cannot set up its pool");
            None
        });
        let shared = Arc::new(Shared {
            id: id.clone(),
            tools,
            guard: crate::guard::Guard::new(&settings),
            retrieval,
            quotas: crate::quota::Quotas::new(settings.quota.clone()),
            permits: Arc::new(Semaphore::new(settings.worker.max_concurrent_turns)),
            settings,
            store,
            model,
            running: Mutex::new(HashMap::new()),
            release: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        tracing::info!(worker = %id, "worker started");
        let done = tokio::spawn(run(shared, reader, control, shutdown));
        Ok(Self { id, done })
    }

    /// This worker's consumer name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits until the worker has drained and stopped.
    pub async fn wait(self) {
        if let Err(e) = self.done.await {
            tracing::error!(error = %e, "worker task panicked");
        }
    }
}

/// How this worker learns of new turns.
enum Reader {
    Blocking(Box<TurnReader>),
    Cluster(Subscriber),
}

async fn run(shared: Arc<Shared>, reader: Reader, control: control::Listener, shutdown: CancellationToken) {
    let stop_claiming = shutdown.child_token();
    let tasks = TaskTracker::new();
    match reader {
        Reader::Blocking(c) => tasks.spawn(read::run(shared.clone(), *c, stop_claiming.clone())),
        Reader::Cluster(s) => tasks.spawn(read_cluster::run(shared.clone(), s, stop_claiming.clone())),
    };
    tasks.spawn(sweep::run(shared.clone(), stop_claiming.clone()));
    tasks.spawn(exporter::run(shared.clone(), stop_claiming.clone()));
    let control_stop = CancellationToken::new();
    tasks.spawn(control.run(shared.clone(), control_stop.clone()));
    tasks.close();

    shutdown.cancelled().await;
    tracing::info!(worker = %shared.id, "draining");
    shared.tracker.close();
    let drain = ms(shared.settings.worker.drain_timeout_ms);
    if tokio::time::timeout(drain, shared.tracker.wait()).await.is_err() {
        let left = shared.running.lock().map(|m| m.len()).unwrap_or(0);
        tracing::warn!(turns = left, "drain deadline passed; releasing turns to other workers");
        shared.release.cancel();
        shared.tracker.wait().await;
    }
    control_stop.cancel();
    tasks.wait().await;
    leave_group(&shared).await;
    tracing::info!(worker = %shared.id, "worker stopped");
}

/// Removes this consumer from each partition's group where it has nothing pending, so the group
/// does not collect dead consumer names; a consumer with pending entries stays for reclaim.
async fn leave_group(shared: &Shared) {
    for p in 0..shared.store.keys().partitions() {
        // Best effort: a consumer left behind is removed by the sweep's consumer GC.
        let _ = shared.store.leave_group_if_idle(p, &shared.id).await;
    }
}

impl Shared {
    /// Runs a delivered turn in its own task once a slot is free. Returns false at shutdown.
    async fn dispatch(self: &Arc<Self>, d: Delivery, stop: &CancellationToken) -> bool {
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return false,
            },
            _ = stop.cancelled() => return false,
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            turn::run(&shared, d).await;
            drop(permit);
        });
        true
    }
}
