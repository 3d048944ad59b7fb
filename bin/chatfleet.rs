//! The `chatfleet` binary: parses arguments, loads settings, starts telemetry, and runs a role
//! from the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chatfleet::settings::Settings;

/// jemalloc instead of glibc's malloc: a gateway keeps many small long-lived blocks per socket,
/// and glibc kept the holes that connects' short-lived blocks left among them, about as much again
/// as the sockets' live heap (docs/benchmarks.md, "4 KiB per idle socket").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "chatfleet", version, about = "Real-time LLM chat streaming at scale over Redis Streams")]
struct Cli {
    /// Settings file layered over config/default.toml (environment variables CHATFLEET__… win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients (WebSocket) on gateway.listen.
    Gateway,
    /// Claim and run turns.
    Worker,
    /// Operator tool: queue state, workers, dead letters, cancel (`--json` for scripts).
    Ctl(chatfleet::ctl::CtlArgs),
    /// Everything locally: a private Redis, a gateway and workers with the demo model.
    Dev {
        /// Worker count.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Run on a private 3-primary Redis Cluster instead of one Redis.
        #[arg(long)]
        cluster: bool,
        /// No private PostgreSQL archive (conversations live in Redis only, as without one).
        #[arg(long)]
        no_archive: bool,
    },
    /// Copy finished turns to the PostgreSQL archive (workers also do this when archive.url is set).
    Archiver,
    /// Start a private Redis Cluster on loopback, print its URL, run until stopped (for tests).
    #[command(hide = true)]
    LocalCluster {
        #[arg(long, default_value_t = 3)]
        primaries: usize,
    },
    /// Start a private PostgreSQL on loopback, print its URL, run until stopped (for benchmarks).
    #[command(hide = true)]
    LocalPostgres,
    /// Load and benchmark scenarios over real sockets (docs/benchmarks.md).
    #[cfg(feature = "bench")]
    Bench(chatfleet::bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let dev_file = PathBuf::from("config/dev.toml");
    let file = match (&cli.config, &cli.command) {
        (Some(f), _) => Some(f.clone()),
        (None, Command::Dev { .. }) if dev_file.exists() => Some(dev_file),
        _ => None,
    };
    let settings = match Settings::load(file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chatfleet: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match chatfleet::telemetry::init(&settings.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chatfleet: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = chatfleet::shutdown::on_signal();
    let result = match cli.command {
        Command::Gateway => chatfleet::app::run_gateway(settings, shutdown).await,
        Command::Worker => chatfleet::app::run_worker(settings, shutdown).await,
        Command::Dev { workers, cluster, no_archive } => {
            chatfleet::app::run_dev(settings, workers, cluster, !no_archive, shutdown).await
        }
        Command::Archiver => chatfleet::app::run_archiver(settings, shutdown).await,
        Command::LocalCluster { primaries } => chatfleet::app::run_local_cluster(primaries, shutdown).await,
        Command::LocalPostgres => chatfleet::app::run_local_postgres(shutdown).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => chatfleet::bench::run(args, shutdown).await,
        Command::Ctl(cmd) => chatfleet::app::run_ctl(settings, cmd).await,
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chatfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
