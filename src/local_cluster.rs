//! A private Redis Cluster on loopback ports, for the tests and `chatfleet local-cluster`:
//! `primaries` nodes (plus `replicas` per primary), joined with `redis-cli --cluster create`.
//! Readiness is `cluster_state:ok` on every node, not a sleep.

use std::time::Duration;

use crate::local_redis::{LocalRedis, LocalRedisError};

/// Time allowed for the cluster to agree on its slots after creation.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private cluster. Its nodes are killed when it is dropped.
pub struct LocalCluster {
    pub nodes: Vec<LocalRedis>,
}

impl LocalCluster {
    /// Starts and forms a cluster. `node_timeout_ms` is `cluster-node-timeout`: how fast a dead
    /// primary is failed over (tests use about a second).
    pub async fn start(primaries: usize, replicas: usize, node_timeout_ms: u64) -> Result<Self, LocalRedisError> {
        let timeout = node_timeout_ms.to_string();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            // No diskless-sync delay: a replica must hold the data before its primary can die,
            // or it refuses to fail over (Redis waits 5 s by default to batch replicas).
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                timeout.as_str(),
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ];
            nodes.push(LocalRedis::start(&args).await?);
        }
        let cli = which::which("redis-cli").map_err(|_| LocalRedisError::NotInstalled)?;
        let mut create = tokio::process::Command::new(cli);
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().await?;
        if !out.status.success() {
            return Err(LocalRedisError::NotReady(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let cluster = Self { nodes };
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// Waits until every node reports `cluster_state:ok` and knows every other node, and every
    /// replica's link to its primary is up (synced).
    pub async fn wait_ok(&self) -> Result<(), LocalRedisError> {
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            let mut ok = true;
            for n in &self.nodes {
                let info = n.cli(&["cluster", "info"]).await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()));
            }
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LocalRedisError::NotReady("the cluster did not reach cluster_state:ok".into()));
            }
            // Polling the cluster's own state with a deadline: gossip has no completion signal.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis-cluster://127.0.0.1:<first>?node=127.0.0.1:<second>&…`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port()));
        }
        url
    }
}
