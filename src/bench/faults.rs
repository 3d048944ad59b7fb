//! Redis faults for `chatfleet bench chaos --fault …`: what production Redis does to a fleet,
//! done to the bench's own Redis while the load runs. Each kind is its own run, so its report
//! shows the lost, doubled, wrong and reset turns of that fault alone.

use std::time::Duration;

use anyhow::{bail, Context};

use super::child::unix_us;
use super::driver::Action;
use super::fleet::{redis_pid, Backend, Fleet};
use super::procstat::{self, Sample};

/// Which faults a chaos run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Workers SIGKILLed and a gateway restarted (chatfleet's own processes).
    Processes,
    /// Redis stalls (DEBUG SLEEP): one shorter than the command timeout, one longer than the lease.
    Stall,
    /// Redis restarts from a snapshot taken a moment earlier: the last writes are lost while the
    /// epoch stays the same (as a failover to a lagging replica, or AOF everysec).
    RestartLoss,
    /// Every client connection of Redis is killed, several times (CLIENT KILL).
    ConnKill,
    /// Every slot of one Cluster primary moves to another (`redis-cli --cluster reshard`).
    Reshard,
    /// A Cluster primary is SIGKILLed; its replica takes over.
    Failover,
}

/// Redis faults, as timed actions of the driver.
#[derive(Debug, Clone, Copy)]
pub enum RedisFault {
    /// DEBUG SLEEP this long (the server answers nothing meanwhile).
    Stall(Duration),
    /// SAVE: the snapshot a later `Restart` comes back from.
    Save,
    /// SIGKILL and start again from the saved snapshot.
    Restart,
    /// CLIENT KILL every normal and pub/sub connection.
    KillConnections,
    /// Move every slot of the first primary to the second.
    Reshard,
    /// SIGKILL the first primary (its replica is promoted).
    KillPrimary,
}

/// The actions of a chaos run with `fault`, at fractions of the run time `run_ms`, and the
/// Redis Cluster shape it needs (primaries, replicas per primary).
pub fn plan(fault: Fault, run_ms: u64, cmd_timeout_ms: u64) -> (Vec<(Duration, Action)>, usize, usize) {
    let at = |f: f64| Duration::from_millis((run_ms as f64 * f) as u64);
    let redis = |f: f64, r: RedisFault| (at(f), Action::Redis(r));
    match fault {
        Fault::Processes => (
            vec![
                (at(0.25), Action::KillWorker(0)),
                (at(0.5), Action::RestartGateway(0)),
                (at(0.75), Action::KillWorker(1)),
            ],
            0,
            0,
        ),
        Fault::Stall => (
            vec![
                redis(0.3, RedisFault::Stall(Duration::from_millis(cmd_timeout_ms * 3 / 4))),
                redis(0.6, RedisFault::Stall(Duration::from_millis(cmd_timeout_ms * 2 + 1000))),
            ],
            0,
            0,
        ),
        Fault::RestartLoss => (vec![redis(0.3, RedisFault::Save), redis(0.4, RedisFault::Restart)], 0, 0),
        Fault::ConnKill => ((2..=8).map(|i| redis(i as f64 / 10.0, RedisFault::KillConnections)).collect(), 0, 0),
        Fault::Reshard => (vec![redis(0.3, RedisFault::Reshard)], 3, 0),
        Fault::Failover => (vec![redis(0.3, RedisFault::KillPrimary)], 3, 1),
    }
}

/// Makes `fault` happen. Returns when (unix µs), what, the process it hit and its last reading.
pub async fn act(fleet: &mut Fleet, fault: RedisFault) -> anyhow::Result<(u64, String, String, Sample)> {
    let name = if fleet.redis.is_cluster() { "redis-0".to_string() } else { "redis".to_string() };
    let last = procstat::sample(fleet.redis_pids[0]).unwrap_or_default();
    let at = unix_us();
    let what = match fault {
        RedisFault::Stall(d) => {
            // In the background: the driver keeps sampling while Redis sleeps.
            let secs = format!("{:.3}", d.as_secs_f64());
            let node = first_node(&fleet.redis);
            tokio::spawn(async move {
                let _ = node_cli(node, &["DEBUG", "SLEEP", &secs]).await;
            });
            format!("redis stall {} ms", d.as_millis())
        }
        RedisFault::Save => {
            let out = node_cli(first_node(&fleet.redis), &["SAVE"]).await?;
            if out.trim() != "OK" {
                bail!("SAVE failed: {out}");
            }
            "redis snapshot saved".to_string()
        }
        RedisFault::Restart => {
            let Backend::Single(r) = &mut fleet.redis else { bail!("restart-loss needs one standalone Redis") };
            r.restart().await.context("restarting Redis from its snapshot")?;
            fleet.redis_pids[0] = redis_pid(&r.url()).await?;
            "redis restarted from the snapshot (writes since lost)".to_string()
        }
        RedisFault::KillConnections => {
            for n in node_ports(&fleet.redis) {
                for kind in ["normal", "pubsub"] {
                    node_cli(n, &["CLIENT", "KILL", "TYPE", kind]).await?;
                }
            }
            "redis connections killed".to_string()
        }
        RedisFault::Reshard => {
            let Backend::Cluster(c) = &fleet.redis else { bail!("reshard needs --cluster") };
            let (from, to) = (c.nodes[0].port(), c.nodes[1].port());
            let from_id = node_cli(from, &["CLUSTER", "MYID"]).await?.trim().to_string();
            let to_id = node_cli(to, &["CLUSTER", "MYID"]).await?.trim().to_string();
            let mut cmd = tokio::process::Command::new("redis-cli");
            cmd.args(["--cluster", "reshard", &format!("127.0.0.1:{from}"), "--cluster-from", &from_id])
                .args(["--cluster-to", &to_id, "--cluster-slots", "16384", "--cluster-yes"])
                .stdout(std::process::Stdio::null());
            // In the background: the slots move while the load runs.
            tokio::spawn(async move {
                let _ = cmd.status().await;
            });
            format!("reshard: every slot of 127.0.0.1:{from} moves to 127.0.0.1:{to}")
        }
        RedisFault::KillPrimary => {
            let Backend::Cluster(c) = &mut fleet.redis else { bail!("failover needs --cluster") };
            let port = c.nodes[0].port();
            c.nodes[0].kill().await;
            format!("failover: primary 127.0.0.1:{port} killed")
        }
    };
    Ok((at, what, name, last))
}

fn first_node(b: &Backend) -> u16 {
    node_ports(b)[0]
}

fn node_ports(b: &Backend) -> Vec<u16> {
    match b {
        Backend::Single(r) => vec![r.port()],
        Backend::Cluster(c) => c.nodes.iter().map(|n| n.port()).collect(),
    }
}

/// `redis-cli -p <port> <args>`, bounded in time.
async fn node_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output(),
    )
    .await
    .context("redis-cli timed out")??;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
