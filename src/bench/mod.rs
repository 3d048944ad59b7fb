//! `chatfleet bench <scenario>`: a load generator that speaks protocol v1 over real sockets.
//!
//! It starts the system itself (a private Redis, and gateway and worker processes spawned from
//! the current executable) or targets a running deployment (`--url`); spreads sockets over load
//! child processes and 127.0.0.x source addresses; samples CPU and RSS of every process from
//! `/proc`; scrapes server stage timings from `/metrics`; and writes a summary table, a JSON file
//! and SVG plots under `target/bench/`. Scenarios and their targets: docs/benchmarks.md.
//!
//! The exit code is non-zero only for functional failures (lost, duplicated or wrong events,
//! crashes, timeouts), never for a missed performance target.

mod child;
mod client;
mod driver;
mod faults;
mod fleet;
mod peers;
mod plan;
mod plot;
mod procstat;
mod report;
mod scenario;
mod scrape;
mod session;
mod sio;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Zero-length turns through the whole path; turns/s and Redis CPU per turn, beside BullMQ.
    Dispatch,
    /// Turns paced at a fixed rate; send → `turn_started`, and the server's queue wait.
    ClaimLatency,
    /// What the fleet adds to the model's time to first token, at 1,000 sessions.
    TtftOverhead,
    /// Many concurrent streaming turns; delta gaps, lag, CPU per token, beside Socket.IO.
    Stream,
    /// Idle subscribed sockets on one gateway; RSS per connection.
    Idle,
    /// A reconnect storm: every socket connects and says hello at once; connect → `welcome`
    /// percentiles, beside Socket.IO clients reconnecting at once.
    Storm,
    /// Streams for a long time; RSS growth, errors, lost events.
    Soak,
    /// `stream` while workers are killed and gateways restarted; takeover and reconnect times.
    Chaos,
    /// The largest session count whose delta gap p99 stays within 2 × the coalescing window,
    /// for chatfleet and for Socket.IO: `stream` steps up a ladder of counts, then bisects.
    Capacity,
    /// Internal: a load child process, driven by its parent over stdin/stdout.
    #[value(hide = true)]
    LoadChild,
}

/// Arguments of `chatfleet bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Shrink the scenario to run in about 20 s (CI smoke runs).
    #[arg(long)]
    pub quick: bool,
    /// Target a running gateway (host:port, repeatable) instead of starting a system. Server CPU,
    /// RSS and metrics are then not reported, and scenarios that kill processes refuse to run.
    #[arg(long, value_name = "HOST:PORT")]
    pub url: Vec<SocketAddr>,
    /// Repeat the scenario this many times and report medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Run time in seconds (soak: its whole duration), overriding the scenario's default.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Sessions (sockets), overriding the scenario's default.
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Load child processes, overriding the scenario's default.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Worker processes, overriding the scenario's default.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Extra setting for the spawned fleet, `SECTION__KEY=VALUE` (becomes `CHATFLEET__…`),
    /// repeatable, e.g. `--set WORKER__MAX_CONCURRENT_TURNS=2000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Run Redis as a local Redis Cluster of N primaries (no replicas) instead of one server.
    /// Redis CPU, RSS and command statistics are then summed over the nodes, and the peers
    /// (which use one standalone Redis) are skipped.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cluster: Option<u16>,
    /// Partition count of the spawned fleet (`redis.partitions`); the same as
    /// `--set REDIS__PARTITIONS=P`.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub partitions: Option<u16>,
    /// chaos: which faults to make (each kind its own run, so the report is that fault's alone).
    #[arg(long, value_enum, default_value = "processes")]
    pub fault: faults::Fault,
    /// capacity: the session counts to step through (comma-separated, ascending), overriding the
    /// scenario's ladder; the search bisects between the last that passed and the first that failed.
    #[arg(long, value_name = "N,N,…", value_delimiter = ',')]
    pub ladder: Vec<usize>,
    /// capacity: at most this many bisection steps after the ladder's first failure.
    #[arg(long, value_name = "STEPS")]
    pub bisect: Option<usize>,
    /// Skip the peer system run side by side (BullMQ, Socket.IO).
    #[arg(long)]
    pub no_peer: bool,
    /// Directory for JSON, plots and process logs.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// Runs `chatfleet bench`; the shutdown token (SIGINT/SIGTERM) stops it early, and every
/// process it spawned is killed on the way out.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.scenario == Scenario::LoadChild {
        return child::run().await;
    }
    procstat::raise_nofile_limit();
    tokio::select! {
        r = scenario::run_all(&args) => r,
        _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
    }
}
