//! A private Redis Cluster on loopback ports, for the tests, `chatfleet local-cluster` and the
//! bench: `primaries` nodes (plus `replicas` per primary), joined with `redis-cli --cluster
//! create`, or by hand below three primaries, which `redis-cli` refuses to create.
//! Readiness is `cluster_state:ok` on every node, not a sleep.

use std::time::Duration;

use crate::local_redis::{LocalRedis, LocalRedisError};

/// Time allowed for the cluster to agree on its slots after creation.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Fewest primaries `redis-cli --cluster create` accepts.
const CLI_MIN_PRIMARIES: usize = 3;
/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

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
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                timeout.as_str(),
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ];
            if primaries < CLI_MIN_PRIMARIES {
                // A node learns its own address from a peer's MEET; a lone node never does and
                // reports an empty address in CLUSTER SLOTS, which clients cannot connect to.
                args.extend(["--cluster-announce-ip", "127.0.0.1"]);
            }
            nodes.push(LocalRedis::start(&args).await?);
        }
        if primaries < CLI_MIN_PRIMARIES {
            if replicas > 0 {
                return Err(LocalRedisError::NotReady(format!("replicas need at least {CLI_MIN_PRIMARIES} primaries")));
            }
            form_by_hand(&nodes).await?;
            let cluster = Self { nodes };
            cluster.wait_ok().await?;
            return Ok(cluster);
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

/// Gives each node an equal range of slots and introduces every node to the first: what
/// `redis-cli --cluster create` does, for the one- and two-primary clusters it refuses.
async fn form_by_hand(nodes: &[LocalRedis]) -> Result<(), LocalRedisError> {
    for (i, n) in nodes.iter().enumerate() {
        let (lo, hi) = slot_range(i, nodes.len());
        let out = n.cli(&["cluster", "addslotsrange", &lo.to_string(), &hi.to_string()]).await?;
        if !out.starts_with("OK") {
            return Err(LocalRedisError::NotReady(format!("CLUSTER ADDSLOTSRANGE: {}", out.trim())));
        }
        if i > 0 {
            let first = nodes[0].port().to_string();
            let out = n.cli(&["cluster", "meet", "127.0.0.1", &first]).await?;
            if !out.starts_with("OK") {
                return Err(LocalRedisError::NotReady(format!("CLUSTER MEET: {}", out.trim())));
            }
        }
    }
    Ok(())
}

/// The slots node `i` of `n` serves, first and last inclusive.
fn slot_range(i: usize, n: usize) -> (usize, usize) {
    (i * SLOTS / n, (i + 1) * SLOTS / n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        for n in 1..=5 {
            let ranges: Vec<_> = (0..n).map(|i| slot_range(i, n)).collect();
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges[n - 1].1, SLOTS - 1);
            assert!(ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1));
        }
    }
}
