//! A whole fleet in one process, for the examples that time it: a private Redis, one worker and
//! one gateway on a free loopback port, built from the caller's settings.
//! Shared by path (`#[path = "support/fleet.rs"] mod fleet;`), since examples are separate crates.

use std::net::SocketAddr;

use chatfleet::local_redis::LocalRedis;
use chatfleet::settings::Settings;
use tokio_util::sync::CancellationToken;

/// A running fleet; [`Fleet::stop`] shuts it down.
pub struct Fleet {
    /// The gateway's address.
    pub addr: SocketAddr,
    redis: LocalRedis,
    shutdown: CancellationToken,
    worker: chatfleet::worker::Worker,
}

impl Fleet {
    /// Starts Redis, then a worker and a gateway with `s` (its Redis URL is replaced).
    pub async fn start(mut s: Settings) -> anyhow::Result<Self> {
        let redis = LocalRedis::start(&[]).await?;
        s.redis.url = redis.url();
        let shutdown = CancellationToken::new();
        let store = chatfleet::app::connect_store(&s).await?;
        let model = chatfleet::app::build_model(&s);
        let worker = chatfleet::worker::Worker::start(s.clone(), store.clone(), model, shutdown.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gateway = chatfleet::gateway::Gateway::build(s, store, shutdown.clone()).await?;
        tokio::spawn(gateway.serve(listener));
        Ok(Self { addr, redis, shutdown, worker })
    }

    /// The private Redis's URL, for an example that reads Redis's own figures.
    #[allow(dead_code)] // examples are separate crates, and not every one reads Redis
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// Stops the gateway and the worker, and waits for the worker to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.worker.wait().await;
    }
}
