//! Session channels joined ahead of time, for OpenAI requests that name no session.
//!
//! A request follows its turn on the session's channel, and it must be subscribed before the
//! turn is sent, or the first events could be published before anyone listened. A stateless
//! request creates its session, so the gateway picks the id: it can pick one whose channel it
//! joined earlier. Each tenant that sent such a request keeps a few ids with confirmed
//! subscriptions, refilled in the background after each take, so the request skips the
//! SSUBSCRIBE round trip on its way to the first token.
//!
//! Bounded: at most `gateway.ingress.prejoined_per_tenant` ids for each of at most
//! `gateway.ingress.prejoined_tenants` tenants (the least recently used tenant's pool is dropped
//! to make room). A pooled channel has no publisher until its id is handed out, so it costs
//! Redis one idle subscription. Subscriptions survive pub/sub reconnects like any member's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::hub::{Hub, Subscription};
use crate::keys::{Keyspace, SessionKeys};

/// A new session whose channel this gateway already joined.
pub struct Prejoined {
    pub session_id: String,
    pub keys: SessionKeys,
    pub sub: Subscription,
}

#[derive(Default)]
struct Pool {
    ready: Vec<Prejoined>,
    /// A refill task runs for this tenant.
    filling: bool,
    used: Option<Instant>,
}

struct Inner {
    hub: Hub,
    keys: Keyspace,
    per_tenant: usize,
    tenants: usize,
    pools: Mutex<HashMap<String, Pool>>,
}

/// The pools of every tenant. Cheap to clone.
#[derive(Clone)]
pub struct Prejoins(Arc<Inner>);

/// A new stateless session id: never chosen by the client, so it cannot collide with a session
/// of the same tenant.
pub fn new_session_id() -> String {
    format!("oai-{}", uuid::Uuid::now_v7().simple())
}

impl Prejoins {
    pub fn new(hub: Hub, keys: Keyspace, per_tenant: usize, tenants: usize) -> Self {
        Self(Arc::new(Inner { hub, keys, per_tenant, tenants, pools: Mutex::new(HashMap::new()) }))
    }

    /// A pre-joined new session of `tenant`, if one is ready; starts a refill either way. `None`
    /// when the pool is off, empty or new: the caller joins a channel of its own.
    pub fn take(&self, tenant: &str) -> Option<Prejoined> {
        let inner = &self.0;
        if inner.per_tenant == 0 || inner.tenants == 0 {
            return None;
        }
        let mut pools = inner.pools.lock().expect("prejoin lock");
        if !pools.contains_key(tenant) && pools.len() >= inner.tenants {
            // Dropping the pool leaves its channels (each Subscription leaves on drop).
            let oldest = pools.iter().min_by_key(|(_, p)| p.used).map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                pools.remove(&t);
            }
        }
        let pool = pools.entry(tenant.to_string()).or_default();
        pool.used = Some(Instant::now());
        let taken = pool.ready.pop();
        if !pool.filling {
            pool.filling = true;
            tokio::spawn(self.clone().refill(tenant.to_string()));
        }
        metrics::counter!(crate::metrics::GATEWAY_PREJOINS, "outcome" => if taken.is_some() { "hit" } else { "miss" })
            .increment(1);
        taken
    }

    /// Joins new sessions' channels until the tenant's pool is full. Stops at the first failed
    /// join (Redis unreachable): the next take starts it again.
    async fn refill(self, tenant: String) {
        loop {
            {
                let mut pools = self.0.pools.lock().expect("prejoin lock");
                let Some(p) = pools.get_mut(&tenant) else { return }; // evicted meanwhile
                                                                      // Checked and cleared under one lock, so a take that pops after this starts a
                                                                      // refill of its own.
                if p.ready.len() >= self.0.per_tenant {
                    p.filling = false;
                    return;
                }
            }
            let session_id = new_session_id();
            let keys = self.0.keys.session(&tenant, &session_id);
            let joined = self.0.hub.join(&keys.channel()).await;
            let mut pools = self.0.pools.lock().expect("prejoin lock");
            let Some(p) = pools.get_mut(&tenant) else { return };
            match joined {
                Ok(sub) => p.ready.push(Prejoined { session_id, keys, sub }),
                Err(e) => {
                    tracing::debug!(error = %e, "pre-joining a session channel failed");
                    p.filling = false;
                    return;
                }
            }
        }
    }
}
