//! A real redis-server with the functions loaded, a store and a hub with one log read at a time,
//! for the feed's tests.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use tokio_util::sync::CancellationToken;

use crate::gateway::hub::{Hub, HubLimits};
use crate::keys::SessionKeys;
use crate::local_redis::LocalRedis;
use crate::settings::Settings;
use crate::store::{Redis, Store};

pub(super) struct Fixture {
    _redis: LocalRedis,
    pub store: Arc<Store>,
    pub hub: Hub,
    /// A connection of its own, for writing the session the way the Lua library does.
    pub writer: Client,
    /// Session `s1` of tenant `tenant`.
    pub keys: SessionKeys,
    shutdown: CancellationToken,
}

impl Fixture {
    pub async fn start() -> Self {
        let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
        let mut settings = Settings::defaults();
        settings.redis.url = redis.url();
        let conn = Redis::connect(&settings.redis).await.expect("connects");
        conn.load_functions().await.expect("functions load");
        let writer = conn.dedicated().await.expect("writer client");
        let store = Arc::new(Store::new(conn.clone(), &settings));
        let shutdown = CancellationToken::new();
        // One log read at a time: a feed waiting for its turn must lose nothing either.
        let limits = HubLimits {
            queue_events: 10_000,
            queue_bytes: 64 << 20,
            log_reads: 1,
            subscribe_timeout: Duration::from_secs(5),
            cluster_check: Duration::from_secs(1),
        };
        let hub = Hub::start(conn.subscriber().await.expect("subscriber"), limits, shutdown.clone());
        let keys = store.keys().session("tenant", "s1");
        Self { _redis: redis, store, hub, writer, keys, shutdown }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
