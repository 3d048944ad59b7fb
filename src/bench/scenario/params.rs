//! Each scenario's shape: sessions, load children, fleet size, demo model, run time. Defaults
//! are sized for a 2-core box that Redis, chatfleet and the load generator share; `--quick`
//! shrinks every scenario to about 20 s.

use std::time::Duration;

use super::super::driver::Action;
use super::super::plan::Mode;
use super::super::{BenchArgs, Scenario};

/// The shape of one scenario run.
#[derive(Debug, Clone)]
pub struct Params {
    pub sessions: usize,
    pub clients: usize,
    pub gateways: usize,
    pub workers: usize,
    pub mode: Mode,
    pub run_ms: u64,
    pub drain_ms: u64,
    pub ttft_ms: u64,
    pub tokens_per_sec: u64,
    pub max_tokens: usize,
    pub coalesce_ms: u64,
    pub max_concurrent_turns: usize,
    /// Connections per second, per load child.
    pub connect_per_sec: u64,
    pub series_metric: &'static str,
    pub actions: Vec<(Duration, Action)>,
    pub extra_env: Vec<(String, String)>,
    /// Run the peer system side by side.
    pub peer: bool,
    /// Primaries of the local Redis Cluster the fleet runs on; 0 is one standalone Redis.
    pub cluster_primaries: usize,
    /// Replicas per primary of that Cluster (a failover needs one).
    pub cluster_replicas: usize,
    /// `cluster-node-timeout` of that Cluster: how long a dead primary goes unnoticed.
    pub cluster_node_timeout_ms: u64,
}

pub fn params(args: &BenchArgs) -> Params {
    let q = args.quick;
    let pick = |full: u64, quick: u64| if q { quick } else { full };
    let pickn = |full: usize, quick: usize| if q { quick } else { full };
    let mut p = Params {
        sessions: 100,
        clients: 2,
        gateways: 1,
        workers: 1,
        mode: Mode::Closed { think_ms: 0 },
        run_ms: 10_000,
        drain_ms: 5_000,
        ttft_ms: 0,
        tokens_per_sec: 0,
        max_tokens: 0,
        coalesce_ms: 30,
        max_concurrent_turns: 256,
        connect_per_sec: 2000,
        series_metric: "turn",
        actions: Vec::new(),
        extra_env: Vec::new(),
        peer: !args.no_peer,
        cluster_primaries: args.cluster.map_or(0, usize::from),
        cluster_replicas: 0,
        // Nothing fails over in a bench but `chaos --fault failover`: long enough that a node busy
        // on a loaded box is never taken for dead.
        cluster_node_timeout_ms: 15_000,
    };
    match args.scenario {
        Scenario::Dispatch => {
            // Closed loop: enough sessions that CPU, not one turn's latency, bounds throughput.
            p.sessions = pickn(1000, 300);
            p.run_ms = pick(15_000, 5_000);
            // One worker slot per session, so the default cap (256) is not what is measured.
            p.max_concurrent_turns = 2000;
            p.series_metric = "turn";
        }
        Scenario::ClaimLatency => {
            p.sessions = pickn(400, 200);
            p.mode = Mode::Paced { per_sec: 1000.0 };
            p.run_ms = pick(20_000, 6_000);
            p.series_metric = "turn_started";
        }
        Scenario::TtftOverhead => {
            p.sessions = pickn(1000, 300);
            p.mode = Mode::Closed { think_ms: 1000 };
            p.max_tokens = 20;
            p.tokens_per_sec = 50;
            p.run_ms = pick(20_000, 6_000);
            // The overhead, not queueing behind the default cap of 256 turns per worker.
            p.max_concurrent_turns = 2000;
            p.series_metric = "first_delta";
        }
        Scenario::Stream => {
            p.sessions = pickn(2000, 200);
            p.workers = 2;
            p.max_tokens = pickn(500, 100);
            p.tokens_per_sec = 50;
            p.run_ms = pick(30_000, 6_000);
            // 2,000 streams offer more than this box delivers, so a 10 s turn takes several times
            // that; a turn still running when the drain ends counts as unfinished. The drain ends
            // as soon as every session is done.
            p.drain_ms = pick(90_000, 15_000);
            p.max_concurrent_turns = 2000;
            p.series_metric = "gap";
        }
        Scenario::Capacity => {
            // `stream`'s load, one short run per session count (`capacity.rs` sets the count);
            // 5 s turns, so each session runs a few of them in a step. Socket.IO is run by the
            // search itself, at its own counts, so `peer` only says whether to run it.
            p.workers = 2;
            p.max_tokens = pickn(250, 50);
            p.tokens_per_sec = 50;
            p.run_ms = pick(10_000, 3_000);
            // Past capacity, turns end late; one still running when the drain ends counts as
            // unfinished and fails the step. The drain ends as soon as every session is done.
            p.drain_ms = pick(30_000, 10_000);
            p.series_metric = "gap";
        }
        Scenario::Idle => {
            p.sessions = pickn(15_000, 2_000);
            p.clients = pickn(3, 2);
            p.mode = Mode::Idle;
            p.run_ms = pick(5_000, 2_000);
            p.connect_per_sec = 1500;
            p.series_metric = "connect";
            p.peer = false;
        }
        Scenario::Storm => {
            p.sessions = pickn(15_000, 2_000);
            p.clients = pickn(3, 2);
            p.mode = Mode::Idle;
            p.run_ms = pick(2_000, 1_000);
            // Every socket at once: the children start them all within a few milliseconds.
            p.connect_per_sec = 1_000_000;
            p.series_metric = "connect";
        }
        Scenario::Soak => {
            p.sessions = pickn(1000, 200);
            p.workers = 2;
            p.mode = Mode::Closed { think_ms: 200 };
            p.max_tokens = 100;
            p.tokens_per_sec = 50;
            p.run_ms = pick(600_000, 12_000);
            p.max_concurrent_turns = 1000;
            p.series_metric = "gap";
            p.peer = false;
        }
        Scenario::Chaos => {
            p.sessions = pickn(500, 150);
            p.gateways = 2;
            p.workers = 3;
            p.mode = Mode::Closed { think_ms: 200 };
            p.max_tokens = 100;
            p.tokens_per_sec = 50;
            p.run_ms = pick(40_000, 12_000);
            p.drain_ms = 20_000;
            p.max_concurrent_turns = 1000;
            p.series_metric = "gap";
            p.peer = false;
            // The fleet's default command timeout (`redis.command_timeout_ms`): the stalls are
            // one shorter than it and one longer than the lease.
            let (actions, primaries, replicas) = super::super::faults::plan(args.fault, p.run_ms, 2000);
            p.actions = actions;
            if primaries > 0 {
                p.cluster_primaries = primaries;
                p.cluster_replicas = replicas;
            }
            if replicas > 0 {
                // A failover within the run: the dead primary is noticed after 2 s, and the run
                // is long enough for the takeovers that follow.
                p.cluster_node_timeout_ms = 2000;
                p.run_ms = pick(40_000, 25_000);
            }
            // A short drain keeps a gateway restart brisk; clients are told to reconnect first.
            p.extra_env.push(("GATEWAY__DRAIN_TIMEOUT_MS".into(), "3000".into()));
        }
        Scenario::LoadChild => {}
    }
    for kv in &args.settings {
        if let Some((k, v)) = kv.split_once('=') {
            p.extra_env.push((k.trim_start_matches("CHATFLEET__").to_string(), v.to_string()));
        }
    }
    if let Some(n) = args.partitions {
        p.extra_env.push(("REDIS__PARTITIONS".into(), n.to_string()));
    }
    if p.cluster_primaries > 0 {
        // The peers are measured on one standalone Redis; beside a cluster they compare nothing.
        p.peer = false;
    }
    if let Some(d) = args.duration {
        p.run_ms = d * 1000;
    }
    if let Some(s) = args.sessions {
        p.sessions = s;
    }
    if let Some(c) = args.clients {
        p.clients = c.max(1);
    }
    if let Some(w) = args.workers {
        p.workers = w.max(1);
    }
    // Each load child holds at most ~9,000 sockets, far below the per-process file limit.
    p.clients = p.clients.max(p.sessions.div_ceil(9_000));
    p
}
