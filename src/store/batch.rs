//! Group commit: the ops of many sessions and turns travel to Redis in one `cf3_batch` call.
//!
//! Each lane has one call in flight at a time. In Cluster every partition (slot) has its own lane,
//! since a call may touch one slot only. On a single Redis, where every key is on one node,
//! `redis.batch_lanes` lanes serve one queue per class: an op goes with the next call of whichever
//! lane is free, so it waits for a call in flight only when every lane has one (a lane chosen by
//! partition made an op wait for its own lane's call while another lane stood idle). A batch is
//! whatever queued while the lanes were busy, so an idle system sends each op at once and a busy
//! one amortises the function call over up to `redis.batch_max_ops` ops. Every op is idempotent
//! (lua/chatfleet.lua, I5), so the client's resend of a call whose reply was lost applies nothing
//! twice.
//!
//! Lanes come in two classes. Stream ops (a running turn's deltas, tool states, heartbeats,
//! audits) are many and cheap to delay by a few milliseconds; every other op (enqueue, start,
//! finish, open, detach, cancel…) is on a user's wait for an ack, a `turn_started` or the next
//! send. Each class has its own lanes, so a start never queues behind a call carrying a hundred
//! deltas, and control calls carry at most `redis.batch_control_max_ops` ops. Ops of one turn
//! never race across the classes: every caller awaits a write's reply before its next one.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use fred::prelude::*;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::conn::function;
use super::ops::Op;
use super::{Redis, StoreError};
use crate::metrics as m;

/// An op waiting for its batch, and where its reply goes.
struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// The group-commit lanes of one process. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher(Arc<Inner>);

struct Inner {
    redis: Redis,
    /// The first ARGV entries of every call: the deployment's settings the ops need.
    settings: Arc<[Value]>,
    /// The queues of the lanes: stream queues first, then as many control queues. One per class
    /// on a single Redis (served by `lanes_per_queue` lanes); one per partition and class in
    /// Cluster (one lane each).
    queues: Vec<OnceLock<mpsc::Sender<Pending>>>,
    per_class: usize,
    lanes_per_queue: usize,
    max_ops: usize,
    control_max_ops: usize,
    queue: usize,
}

/// The ops of a running turn's stream (see the module doc); every other kind is a control op.
fn is_stream_op(kind: &str) -> bool {
    matches!(kind, "emit" | "emitc" | "tool" | "hb" | "audit")
}

impl Batcher {
    pub fn new(redis: Redis, settings: Vec<Value>, partitions: u16) -> Self {
        let settings: Arc<[Value]> = settings.into();
        let s = redis.settings();
        let clustered = redis.is_clustered();
        // In Cluster a call may only touch one slot, and every partition has its own lane.
        let (per_class, lanes_per_queue) = if clustered { (partitions as usize, 1) } else { (1, s.batch_lanes.max(1)) };
        let queues = (0..2 * per_class).map(|_| OnceLock::new()).collect();
        let (max_ops, queue) = (s.batch_max_ops.max(1), s.batch_queue.max(1));
        let control_max_ops = s.batch_control_max_ops.clamp(1, max_ops);
        Self(Arc::new(Inner { redis, settings, queues, per_class, lanes_per_queue, max_ops, control_max_ops, queue }))
    }

    /// Sends `op` with the next batch of partition `p`'s lane; returns its reply.
    pub async fn call(&self, p: u16, op: Op) -> Result<Value, StoreError> {
        let kind = op.kind;
        // In Cluster there is a queue per partition and class; in standalone one per class.
        let stream = is_stream_op(kind);
        let i = p as usize % self.0.per_class + if stream { 0 } else { self.0.per_class };
        let max_ops = if stream { self.0.max_ops } else { self.0.control_max_ops };
        let tx = self.0.queues[i].get_or_init(|| self.spawn_lanes(max_ops));
        let (reply, rx) = oneshot::channel();
        // A full queue makes the caller wait: it is bounded (`redis.batch_queue`).
        tx.send(Pending { op, reply }).await.map_err(|_| lane_gone(kind))?;
        let v = rx.await.map_err(|_| lane_gone(kind))??;
        check_op_error(kind, v)
    }

    /// The lanes of one queue. They end when every sender (every clone of the store) is gone.
    fn spawn_lanes(&self, max_ops: usize) -> mpsc::Sender<Pending> {
        let (tx, rx) = mpsc::channel(self.0.queue);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.0.lanes_per_queue {
            tokio::spawn(run_lane(self.0.redis.clone(), self.0.settings.clone(), rx.clone(), max_ops));
        }
        tx
    }
}

fn lane_gone(kind: &'static str) -> StoreError {
    StoreError::Reply { function: kind, detail: "the batch lane stopped".into() }
}

/// An op's `{'err', message}` reply becomes an error of that op alone.
fn check_op_error(kind: &'static str, v: Value) -> Result<Value, StoreError> {
    if let Value::Array(items) = &v {
        if items.len() == 2 && items[0].as_str().as_deref() == Some("err") {
            let detail = items[1].as_string().unwrap_or_default();
            return Err(StoreError::Reply { function: kind, detail });
        }
    }
    Ok(v)
}

/// One lane: takes what its queue holds (at most `max_ops`), sends it as one call, and waits for
/// the reply before it takes more. A free lane holds the queue's lock while it waits for ops, so
/// an op goes to the first lane that is free.
async fn run_lane(redis: Redis, settings: Arc<[Value]>, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, max_ops: usize) {
    let mut batch = Vec::with_capacity(max_ops);
    loop {
        let n = rx.lock().await.recv_many(&mut batch, max_ops).await;
        if n == 0 {
            break;
        }
        send_batch(&redis, &settings, &mut batch).await;
    }
}

/// One call for every op in `batch`; each op's reply (or the call's error) goes to its caller.
async fn send_batch(redis: &Redis, settings: &[Value], batch: &mut Vec<Pending>) {
    let n_keys: usize = batch.iter().map(|p| p.op.keys.len()).sum();
    let n_args: usize = settings.len() + batch.iter().map(|p| 3 + p.op.fields.len()).sum::<usize>();
    let mut keys: Vec<String> = Vec::with_capacity(n_keys);
    let mut args: Vec<Value> = Vec::with_capacity(n_args);
    args.extend_from_slice(settings);
    for p in batch.iter_mut() {
        p.op.push_args(keys.len() + 1, &mut args);
        keys.append(&mut p.op.keys);
    }
    metrics::histogram!(m::REDIS_BATCH_OPS).record(batch.len() as f64);
    let started = Instant::now();
    let result: Result<Value, _> = redis.client().fcall(function::BATCH, keys, args).await;
    metrics::histogram!(m::REDIS_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    match result {
        Ok(Value::Array(replies)) if replies.len() == batch.len() => {
            for (p, v) in batch.drain(..).zip(replies) {
                let _ = p.reply.send(Ok(v));
            }
        }
        Ok(other) => {
            let detail = format!("expected {} replies, got {:?}", batch.len(), other.kind());
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(StoreError::Reply { function: function::BATCH, detail: detail.clone() }));
            }
        }
        Err(e) => {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(StoreError::Redis(e.clone())));
            }
        }
    }
}
