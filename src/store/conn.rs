//! Connections to Redis, configured as `shared/notes/fred.md` recommends: a reconnect policy on
//! every client, command timeouts on non-blocking clients only, TCP keepalive, and a larger
//! pub/sub broadcast buffer.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{TcpConfig, UnresponsiveConfig};

use super::{StoreError, Subscriber};
use crate::settings::{ms, RedisSettings};

/// The Functions library source, loaded by every process at start.
pub const FUNCTIONS_LIBRARY: &str = include_str!("../../lua/chatfleet.lua");

/// Versioned library name (first line of the library). Function names carry the same version
/// (`cf3_*`), so two versions can be loaded side by side during a rolling deploy.
pub const LIBRARY_NAME: &str = "chatfleet_3";

/// The library's functions by name, versioned with [`LIBRARY_NAME`]: every call names its
/// function through these, so a new version is one edit here (and the test below checks that the
/// library registers each).
pub(crate) mod function {
    pub const BATCH: &str = "cf3_batch";
    pub const RECLAIM_SCAN: &str = "cf3_reclaim_scan";
    pub const READ_LOG: &str = "cf3_read_log";
    pub const LEAD: &str = "cf3_lead";
    pub const QUOTA_ACQUIRE: &str = "cf3_quota_acquire";
    pub const QUOTA_RELEASE: &str = "cf3_quota_release";
    #[cfg(test)]
    pub const ALL: [&str; 6] = [BATCH, RECLAIM_SCAN, READ_LOG, LEAD, QUOTA_ACQUIRE, QUOTA_RELEASE];
}

/// The Redis connections of one process.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    builder_config: Config,
    settings: RedisSettings,
}

impl Redis {
    /// Connects the command pool. Fails if Redis cannot be reached within the connect timeout.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let config = Config::from_url(&settings.url)?;
        let pool = builder(&config, settings, true).build_pool(settings.pool_size)?;
        pool.init().await?;
        Ok(Self { pool, builder_config: config, settings: settings.clone() })
    }

    /// A client of the pool, round-robin. `pool.next()` is used explicitly because the pool's own
    /// command methods skew the round robin in fred 10.1 (notes/fred.md §1).
    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    /// A new client with its own connection and no command timeout, for a blocking loop
    /// (XREADGROUP BLOCK). Callers pass a per-call timeout above their BLOCK.
    pub async fn dedicated(&self) -> Result<Client, StoreError> {
        let client = builder(&self.builder_config, &self.settings, false).build()?;
        client.init().await?;
        Ok(client)
    }

    /// [`Self::dedicated`], for a caller outside the store that only hands it back to the store's
    /// blocking reads (the archivers).
    pub async fn dedicated_reader(&self) -> Result<Dedicated, StoreError> {
        Ok(Dedicated(self.dedicated().await?))
    }

    /// The server's version, as the client read it from `INFO server` when it connected.
    pub fn server_version(&self) -> Option<fred::types::Version> {
        self.client().server_version()
    }

    /// Fires when the client library read a Cluster's slot map again (a topology change).
    pub fn topology_changes(&self) -> tokio::sync::broadcast::Receiver<Vec<fred::types::ClusterStateChange>> {
        self.client().cluster_change_rx()
    }

    /// A new pub/sub connection. The caller drives resubscription (see [`Subscriber`]).
    pub async fn subscriber(&self) -> Result<Subscriber, StoreError> {
        let client = builder(&self.builder_config, &self.settings, false).build_subscriber_client()?;
        client.init().await?;
        Ok(Subscriber::new(client))
    }

    /// True when the URL names a Redis Cluster.
    pub fn is_clustered(&self) -> bool {
        self.builder_config.server.is_clustered()
    }

    /// True when Redis answers a PING within the command timeout.
    pub async fn ping(&self) -> bool {
        self.client().ping::<String>(None).await.is_ok()
    }

    /// Loads the Functions library on every primary (REPLACE, so it is idempotent).
    pub async fn load_functions(&self) -> Result<(), StoreError> {
        let _: String = self.client().function_load_cluster(true, FUNCTIONS_LIBRARY).await?;
        Ok(())
    }

    /// True when this build's library is loaded (readiness).
    pub async fn functions_loaded(&self) -> bool {
        let listed: Result<Value, _> = self.client().function_list(Some(LIBRARY_NAME), false).await;
        matches!(listed, Ok(Value::Array(ref libs)) if !libs.is_empty())
    }

    /// Creates the consumer group on a stream (creating the stream), if missing. Starts at "0" so
    /// turns added before the group existed are still delivered.
    pub async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), StoreError> {
        match self.client().xgroup_create::<Value, _, _, _>(stream, group, "0", true).await {
            Ok(_) => Ok(()),
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Self::ensure_group`] for the `workers` group, taking the stream name by value so that
    /// many can be created concurrently.
    pub async fn ensure_group_owned(&self, stream: String) -> Result<(), StoreError> {
        self.ensure_group(&stream, crate::keys::GROUP).await
    }

    /// Adds `consumer` to the `workers` group of `stream` (XGROUP CREATECONSUMER; idempotent).
    pub async fn create_consumer(&self, stream: String, consumer: &str) -> Result<(), StoreError> {
        let _: Value = self.client().xgroup_createconsumer(stream, crate::keys::GROUP, consumer).await?;
        Ok(())
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Closes the pool's connections.
    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}

/// A connection of its own for a blocking read, opaque outside the store.
pub struct Dedicated(Client);

impl Dedicated {
    pub(super) fn client(&self) -> &Client {
        &self.0
    }

    pub async fn quit(&self) {
        let _ = self.0.quit().await;
    }
}

fn builder(config: &Config, s: &RedisSettings, command_timeout: bool) -> Builder {
    let mut b = Builder::from_config(config.clone());
    b.with_connection_config(|c| {
        c.connection_timeout = ms(s.connect_timeout_ms);
        c.internal_command_timeout = ms(s.command_timeout_ms);
        // Every call chatfleet makes is safe to resend (docs/architecture.md, "The write path"),
        // so a command in flight when its connection drops is sent again after the reconnect.
        c.max_command_attempts = s.max_command_attempts;
        c.tcp = TcpConfig { nodelay: Some(true), keepalive: Some(socket2_keepalive()), ..Default::default() };
        if command_timeout {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(ms(s.command_timeout_ms * 2)),
                interval: Duration::from_secs(1),
            };
        }
    })
    .with_performance_config(|p| {
        p.broadcast_channel_capacity = s.broadcast_capacity;
        if command_timeout {
            p.default_command_timeout = ms(s.command_timeout_ms);
        }
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, s.reconnect_max_delay_ms as u32, 2));
    b
}

fn socket2_keepalive() -> fred::socket2::TcpKeepalive {
    fred::socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_registers_every_function_under_this_builds_names() {
        assert!(FUNCTIONS_LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        for name in function::ALL {
            let registered = FUNCTIONS_LIBRARY.contains(&format!("register_function('{name}'"))
                || FUNCTIONS_LIBRARY.contains(&format!("function_name = '{name}'"));
            assert!(registered, "{name} is not registered by lua/chatfleet.lua");
        }
    }
}
