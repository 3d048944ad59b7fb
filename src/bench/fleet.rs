//! The system under test, started by the bench itself: a private Redis (one server, or with
//! `--cluster N` a local Redis Cluster of N primaries) and gateway and worker **processes**
//! spawned from the current executable with `CHATFLEET__…` overrides. Each process gets fixed
//! free ports chosen here (so its `/metrics` can be scraped), its own process group, and is
//! killed when dropped (and by the kernel if the bench dies: `PR_SET_PDEATHSIG`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::procstat::{self, Sample};
use super::scrape;
use crate::local_cluster::LocalCluster;
use crate::local_redis::LocalRedis;

/// Time a spawned process has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a process has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Which role a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Worker,
}

impl Role {
    fn arg(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }
}

/// One spawned chatfleet process.
pub struct Proc {
    pub role: Role,
    pub index: usize,
    pub pid: u32,
    /// The client listener (gateways only).
    pub listen: Option<SocketAddr>,
    pub metrics: SocketAddr,
    child: Child,
}

/// The demo model and worker knobs a scenario sets.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub gateways: usize,
    pub workers: usize,
    pub ttft_ms: u64,
    pub tokens_per_sec: u64,
    pub max_tokens: usize,
    pub coalesce_ms: u64,
    pub max_concurrent_turns: usize,
    /// Primaries of a local Redis Cluster; 0 runs one standalone Redis.
    pub cluster_primaries: usize,
    /// Replicas per primary of that Cluster.
    pub cluster_replicas: usize,
    /// `cluster-node-timeout` of that Cluster.
    pub cluster_node_timeout_ms: u64,
    /// Extra `CHATFLEET__…` variables (name, value).
    pub extra_env: Vec<(String, String)>,
}

/// The private Redis under the fleet.
pub enum Backend {
    Single(Box<LocalRedis>),
    Cluster(LocalCluster),
}

impl Backend {
    async fn start(cluster_primaries: usize, replicas: usize, node_timeout_ms: u64) -> anyhow::Result<Self> {
        Ok(if cluster_primaries == 0 {
            // DEBUG for `bench chaos --fault stall`.
            Backend::Single(Box::new(LocalRedis::start(&["--enable-debug-command", "yes"]).await?))
        } else {
            let c = LocalCluster::start(cluster_primaries, replicas, node_timeout_ms)
                .await
                .with_context(|| format!("cannot start a Redis Cluster of {cluster_primaries} primaries"))?;
            Backend::Cluster(c)
        })
    }

    /// The URL the fleet connects to (`redis-cluster://…` for a cluster).
    pub fn url(&self) -> String {
        match self {
            Backend::Single(r) => r.url(),
            Backend::Cluster(c) => c.url(),
        }
    }

    /// A plain `redis://` URL per server, to ask each for its own pid and statistics.
    pub fn node_urls(&self) -> Vec<String> {
        match self {
            Backend::Single(r) => vec![r.url()],
            Backend::Cluster(c) => c.nodes.iter().map(LocalRedis::url).collect(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    async fn stop(self) {
        match self {
            Backend::Single(r) => r.stop().await,
            Backend::Cluster(c) => {
                for n in c.nodes {
                    n.stop().await;
                }
            }
        }
    }
}

/// A running Redis and chatfleet processes.
pub struct Fleet {
    pub redis: Backend,
    /// Pid of each Redis server, in the order of `redis.node_urls()`.
    pub redis_pids: Vec<u32>,
    pub gateways: Vec<Proc>,
    pub workers: Vec<Proc>,
    env: Vec<(String, String)>,
    logs: PathBuf,
}

/// Puts a spawned process in its own process group (a signal to the bench's terminal does not
/// reach it twice) and has the kernel kill it if the bench dies (`PR_SET_PDEATHSIG`), so no
/// process outlives a crashed or killed bench.
pub fn die_with_bench(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Fleet {
    /// Starts Redis, then the workers and gateways, and waits until each is ready.
    pub async fn start(spec: &FleetSpec, logs: PathBuf) -> anyhow::Result<Self> {
        let redis = Backend::start(spec.cluster_primaries, spec.cluster_replicas, spec.cluster_node_timeout_ms).await?;
        let mut redis_pids = Vec::new();
        for url in redis.node_urls() {
            redis_pids.push(redis_pid(&url).await?);
        }
        let prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let mut env: Vec<(String, String)> = vec![
            ("REDIS__URL".into(), redis.url()),
            ("REDIS__KEY_PREFIX".into(), prefix),
            ("MODEL__DEMO__TTFT_MS".into(), spec.ttft_ms.to_string()),
            ("MODEL__DEMO__TOKENS_PER_SEC".into(), spec.tokens_per_sec.to_string()),
            ("MODEL__DEMO__MAX_TOKENS".into(), spec.max_tokens.to_string()),
            ("WORKER__COALESCE_MS".into(), spec.coalesce_ms.to_string()),
            ("WORKER__MAX_CONCURRENT_TURNS".into(), spec.max_concurrent_turns.to_string()),
            ("TELEMETRY__FILTER".into(), "warn".into()),
            // One load session sends far more than a person: lift the per-socket frame limit and
            // the tenant quotas out of reach, so their checks still run but never refuse.
            ("GATEWAY__LIMITS__MESSAGES_PER_SEC".into(), "1000000".into()),
            ("GATEWAY__LIMITS__BURST".into(), "1000000".into()),
            ("QUOTA__TURNS_PER_MINUTE".into(), "1000000000".into()),
            ("QUOTA__MAX_INFLIGHT_TURNS".into(), "1000000".into()),
        ];
        env.extend(spec.extra_env.iter().cloned());
        std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let mut fleet = Fleet { redis, redis_pids, gateways: Vec::new(), workers: Vec::new(), env, logs };
        for i in 0..spec.workers {
            let p = fleet.spawn(Role::Worker, i, None).await?;
            fleet.workers.push(p);
        }
        for i in 0..spec.gateways {
            let p = fleet.spawn(Role::Gateway, i, None).await?;
            fleet.gateways.push(p);
        }
        Ok(fleet)
    }

    /// Spawns one process and waits for readiness. A gateway restarted keeps its `listen`.
    pub async fn spawn(&self, role: Role, index: usize, listen: Option<SocketAddr>) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("cannot find the chatfleet executable")?;
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let listen = match (role, listen) {
            (Role::Gateway, None) => Some(([127, 0, 0, 1], free_port()?).into()),
            (_, l) => l,
        };
        let log_path = self.logs.join(format!("{}-{index}.log", role.arg()));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(exe);
        cmd.arg(role.arg())
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (format!("CHATFLEET__{k}"), v)))
            .env("CHATFLEET__METRICS__LISTEN", metrics.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(l) = listen {
            cmd.env("CHATFLEET__GATEWAY__LISTEN", l.to_string());
        }
        die_with_bench(&mut cmd);
        let child = cmd.spawn().context("cannot spawn a chatfleet process")?;
        let pid = child.id().context("the child exited at once")?;
        let mut p = Proc { role, index, pid, listen, metrics, child };
        p.wait_ready(&log_path).await?;
        Ok(p)
    }

    /// Client-facing addresses of the gateways.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().filter_map(|g| g.listen).collect()
    }

    /// CPU and RSS of Redis, every gateway and every worker (in that order, with names). Cluster
    /// nodes are `redis-0`, `redis-1`, …: figures add up every process whose name starts with
    /// `redis`, so Redis CPU and RSS are the sum over the nodes.
    pub fn sample(&self) -> Vec<(String, Option<Sample>)> {
        let mut out: Vec<(String, Option<Sample>)> = match self.redis_pids.as_slice() {
            [pid] if !self.redis.is_cluster() => vec![("redis".to_string(), procstat::sample(*pid))],
            pids => pids.iter().enumerate().map(|(i, pid)| (format!("redis-{i}"), procstat::sample(*pid))).collect(),
        };
        for p in self.gateways.iter().chain(&self.workers) {
            out.push((format!("{}-{}", p.role.arg(), p.index), procstat::sample(p.pid)));
        }
        out
    }

    /// Metrics pages of all chatfleet processes, concatenated (histograms add up across them).
    pub async fn scrape(&self, role: Role) -> String {
        let mut page = String::new();
        for p in self.gateways.iter().chain(&self.workers).filter(|p| p.role == role) {
            if let Ok(t) = scrape::fetch(p.metrics).await {
                page.push_str(&t);
            }
        }
        page
    }

    /// `INFO commandstats` of every Redis server, added up.
    pub async fn commandstats(&self) -> CmdStats {
        let mut total = CmdStats::new();
        for url in self.redis.node_urls() {
            add_cmdstats(&mut total, &redis_commandstats(&url).await);
        }
        total
    }

    /// Stops everything: SIGTERM to the chatfleet processes (they drain), then Redis.
    pub async fn stop(mut self) {
        for p in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            p.terminate().await;
        }
        self.redis.stop().await;
    }
}

impl Proc {
    async fn wait_ready(&mut self, log: &std::path::Path) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up ({status}); see {}", self.role.arg(), log.display());
            }
            let ready = match (self.role, self.listen) {
                (Role::Gateway, Some(l)) => matches!(scrape::get(l, "/readyz").await, Ok((200, _))),
                // A worker sets its capacity gauge once it is connected and claiming.
                _ => scrape::fetch(self.metrics).await.is_ok_and(|p| p.contains(crate::metrics::WORKER_CAPACITY)),
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not ready in {READY_TIMEOUT:?}; see {}", self.role.arg(), log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait for the drain, SIGKILL if it takes too long.
    pub async fn terminate(&mut self) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Redis command name → (calls, µs inside the command).
pub type CmdStats = std::collections::BTreeMap<String, (u64, u64)>;

/// Per-command totals of the Redis server behind `url` (`INFO commandstats`). Commands that
/// functions run count too (and inside the FCALL's own time), so this splits Redis time by
/// command.
async fn redis_commandstats(url: &str) -> CmdStats {
    let info = crate::store::info_of(url, "commandstats", INFO_TIMEOUT).await.unwrap_or_default();
    parse_commandstats(&info)
}

/// How long the bench waits for its own Redis's `INFO`.
const INFO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the `cmdstat_…` lines of an `INFO commandstats` reply.
fn parse_commandstats(info: &str) -> CmdStats {
    let mut out = CmdStats::new();
    for line in info.lines() {
        // cmdstat_fcall:calls=10,usec=120,usec_per_call=12.00,...
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let field = |k: &str| {
            rest.split(',').find_map(|kv| kv.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        out.insert(name.to_string(), (field("calls="), field("usec=")));
    }
    out
}

/// Adds `more` into `total`, command by command (the nodes of a cluster split the work).
fn add_cmdstats(total: &mut CmdStats, more: &CmdStats) {
    for (name, (calls, us)) in more {
        let t = total.entry(name.clone()).or_default();
        t.0 += calls;
        t.1 += us;
    }
}

/// The pid of the Redis server behind `url` (`INFO server`).
pub async fn redis_pid(url: &str) -> anyhow::Result<u32> {
    let info = crate::store::info_of(url, "server", INFO_TIMEOUT).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO server has no process_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Commandstats\r\n\
cmdstat_fcall:calls=10,usec=120,usec_per_call=12.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_xadd:calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn commandstats_are_read_and_added_up_over_nodes() {
        let one = parse_commandstats(INFO);
        assert_eq!(one.get("fcall"), Some(&(10, 120)));
        assert_eq!(one.get("xadd"), Some(&(4, 8)));
        let mut total = CmdStats::new();
        add_cmdstats(&mut total, &one);
        add_cmdstats(&mut total, &one);
        add_cmdstats(&mut total, &parse_commandstats("cmdstat_ping:calls=1,usec=1,usec_per_call=1.00"));
        assert_eq!(total.get("fcall"), Some(&(20, 240)));
        assert_eq!(total.get("ping"), Some(&(1, 1)));
        assert_eq!(total.len(), 3);
    }
}
