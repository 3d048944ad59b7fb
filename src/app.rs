//! Assembling processes from the library: the roles `gateway`, `worker` and `dev`.
//!
//! Each function takes settings and a shutdown token, runs until the token fires, drains, and
//! returns. Binaries (bin/chatfleet.rs) only parse arguments, load settings and call these.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::archive::archiver::Archiver;
use crate::archive::Archive;
use crate::gateway::Gateway;
use crate::local_cluster::LocalCluster;
use crate::local_postgres::LocalPostgres;
use crate::local_redis::LocalRedis;
use crate::model::Model;
use crate::settings::Settings;
use crate::settings_base::ms;
use crate::store::{Redis, Store};
use crate::upstream::Router;
use crate::worker::Worker;

/// Connects to Redis and makes sure the functions and consumer groups exist.
pub async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    let redis = Redis::connect(&settings.redis)
        .await
        .with_context(|| format!("cannot connect to Redis (redis.url = {})", redact(&settings.redis.url)))?;
    crate::redis_version::check(redis.server_version())?;
    let store = Store::new(redis, settings);
    store.ensure_schema().await.context("cannot load the Redis functions library")?;
    if store.redis().is_clustered() {
        // A primary added later starts without the functions: load them on every change.
        let (watch, mut changes) = (store.clone(), store.redis().topology_changes());
        tokio::spawn(async move {
            while let Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) = changes.recv().await {
                if let Err(e) = watch.ensure_schema().await {
                    tracing::warn!(error = %e, "reloading functions after a topology change failed");
                }
            }
        });
    }
    Ok(store)
}

/// [`connect_store`], retried with backoff while Redis is not up yet or a Cluster is still forming
/// (its nodes do not agree on the slots yet), for at most `redis.startup_deadline_ms`. Readiness
/// stays false meanwhile. A Redis too old for chatfleet is not retried. `None`: shutdown came first.
pub async fn connect_store_retrying(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let deadline = tokio::time::Instant::now() + ms(settings.redis.startup_deadline_ms);
    let mut pause = Duration::from_millis(100);
    loop {
        let e = match connect_store(settings).await {
            Ok(store) => return Ok(Some(store)),
            Err(e) if e.downcast_ref::<crate::redis_version::TooOld>().is_some() => return Err(e),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(e.context(format!(
                "Redis was not ready within redis.startup_deadline_ms ({} ms)",
                settings.redis.startup_deadline_ms
            )));
        }
        tracing::warn!(error = format!("{e:#}"), retry_in_ms = pause.as_millis() as u64, "Redis not ready; retrying");
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The model the worker talks to: the router over `[upstreams]` with `[routing]`.
pub fn build_model(settings: &Settings) -> Arc<dyn Model> {
    Arc::new(Router::new(settings))
}

/// The store once connected, for the ops listener's readiness check (the listener binds first,
/// so liveness does not depend on Redis).
pub type ReadyStore = Arc<std::sync::OnceLock<Store>>;

/// Binds the ops listener (`metrics.listen`) and serves until shutdown:
/// `/metrics`; `/healthz` (the process runs); `/readyz` (connected, Redis answers, this build's
/// functions are loaded, not draining). Workers have no other HTTP port, so their probes use it.
pub async fn start_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
    store: ReadyStore,
) -> anyhow::Result<SocketAddr> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let handle = crate::metrics::install();
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics.listen = {addr}"))?;
    let local = listener.local_addr()?;
    let draining = shutdown.clone();
    let router = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let (store, draining) = (store.clone(), draining.clone());
                async move {
                    let ready = match store.get() {
                        _ if draining.is_cancelled() => Err("draining"),
                        None => Err("connecting to redis"),
                        Some(s) if !s.redis().ping().await => Err("redis unreachable"),
                        Some(s) if !s.redis().functions_loaded().await => Err("functions not loaded"),
                        Some(_) => Ok("ready"),
                    };
                    match ready {
                        Ok(m) => m.into_response(),
                        Err(m) => (StatusCode::SERVICE_UNAVAILABLE, m).into_response(),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(local)
}

/// Runs a gateway until shutdown.
pub async fn run_gateway(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ready = ReadyStore::default();
    // Registered before /metrics answers, so the first scrape already has every series.
    crate::metrics::install();
    crate::metrics_catalog::register_gateway();
    start_metrics(settings.metrics.listen, shutdown.clone(), ready.clone()).await?;
    let Some(store) = connect_store_retrying(&settings, &shutdown).await? else { return Ok(()) };
    let _ = ready.set(store.clone());
    let listener = crate::gateway::bind(settings.gateway.listen, settings.gateway.listen_backlog)
        .with_context(|| format!("cannot bind gateway.listen = {}", settings.gateway.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let gateway = Gateway::build(settings, store.clone(), shutdown).await?;
    gateway.serve(listener).await?;
    store.redis().quit().await;
    Ok(())
}

/// Runs a worker until shutdown, then drains. With `archive.url` set, the process also runs an
/// archiver (src/archive/archiver.rs).
pub async fn run_worker(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ready = ReadyStore::default();
    // Registered before /metrics answers, so the first scrape already has every series.
    crate::metrics::install();
    crate::metrics_catalog::register_worker(&settings);
    start_metrics(settings.metrics.listen, shutdown.clone(), ready.clone()).await?;
    let Some(store) = connect_store_retrying(&settings, &shutdown).await? else { return Ok(()) };
    let _ = ready.set(store.clone());
    let archiver = start_archiver(&settings, &store, &shutdown).await?;
    let model = build_model(&settings);
    let worker = Worker::start(settings, store.clone(), model, shutdown).await?;
    worker.wait().await;
    if let Some(a) = archiver {
        a.wait().await;
    }
    store.redis().quit().await;
    Ok(())
}

/// Runs only an archiver (for deployments that scale archivers apart from workers).
pub async fn run_archiver(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(settings.archive.enabled(), "archive.url is not set: there is nothing to archive to");
    let ready = ReadyStore::default();
    start_metrics(settings.metrics.listen, shutdown.clone(), ready.clone()).await?;
    let store = connect_store(&settings).await?;
    let _ = ready.set(store.clone());
    if let Some(a) = start_archiver(&settings, &store, &shutdown).await? {
        a.wait().await;
    }
    store.redis().quit().await;
    Ok(())
}

/// Starts an archiver when `archive.url` is set. PostgreSQL may be down: it is retried.
pub async fn start_archiver(
    settings: &Settings,
    store: &Store,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Archiver>> {
    if !settings.archive.enabled() {
        return Ok(None);
    }
    let archive = Archive::new(&settings.archive).context("archive.url")?;
    Ok(Some(Archiver::start(store.clone(), archive, shutdown.clone()).await?))
}

/// Everything locally: a private Redis, one gateway, two workers, the demo model, and (unless
/// `archive` is false, or PostgreSQL is not installed) a private PostgreSQL archive. Prints the
/// URL of the chat page on a line of its own once ready.
// `chatfleet dev` tells the person at the terminal where the page is.
#[allow(clippy::print_stdout)]
pub async fn run_dev(
    mut settings: Settings,
    workers: usize,
    cluster: bool,
    archive: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _postgres = match archive {
        true => match LocalPostgres::start().await {
            Ok(pg) => {
                settings.archive.url = pg.url();
                Archive::new(&settings.archive)?.migrate().await.context("migrating the dev archive")?;
                Some(pg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no archive: conversations live in Redis only");
                None
            }
        },
        false => None,
    };
    // The private servers live until this function returns (they are killed on drop).
    let (_single, _cluster) = if cluster {
        let c = LocalCluster::start(3, 0, 2000).await?;
        settings.redis.url = c.url();
        (None, Some(c))
    } else {
        let r = LocalRedis::start(&[]).await?;
        settings.redis.url = r.url();
        (Some(r), None)
    };
    let ready = ReadyStore::default();
    start_metrics(settings.metrics.listen, shutdown.clone(), ready.clone()).await?;
    let store = connect_store(&settings).await?;
    let _ = ready.set(store.clone());
    let archiver = start_archiver(&settings, &store, &shutdown).await?;
    let mut running = Vec::new();
    for _ in 0..workers {
        let w = Worker::start(settings.clone(), store.clone(), build_model(&settings), shutdown.clone()).await?;
        running.push(w);
    }
    let listener = match TcpListener::bind(settings.gateway.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(addr = %settings.gateway.listen, error = %e, "gateway.listen is taken; using a free port");
            TcpListener::bind((settings.gateway.listen.ip(), 0)).await?
        }
    };
    let addr = listener.local_addr()?;
    let gateway = Gateway::build(settings, store.clone(), shutdown.clone()).await?;
    let serving = tokio::spawn(gateway.serve(listener));
    println!("chatfleet is running; open the chat page at:");
    println!("http://{addr}/");
    shutdown.cancelled().await;
    let _ = serving.await;
    for w in running {
        w.wait().await;
    }
    if let Some(a) = archiver {
        a.wait().await;
    }
    store.redis().quit().await;
    Ok(())
}

/// Starts a private cluster, prints its URL on a line of its own, and runs until shutdown.
#[allow(clippy::print_stdout)] // the URL on stdout is this command's output
pub async fn run_local_cluster(primaries: usize, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(primaries, 0, 2000).await?;
    println!("{}", cluster.url());
    shutdown.cancelled().await;
    drop(cluster);
    Ok(())
}

/// Starts a private PostgreSQL (the archive), prints its URL on a line of its own, and runs
/// until shutdown (for benchmarks of the archive).
#[allow(clippy::print_stdout)] // the URL on stdout is this command's output
pub async fn run_local_postgres(shutdown: CancellationToken) -> anyhow::Result<()> {
    let pg = LocalPostgres::start().await?;
    println!("{}", pg.url());
    shutdown.cancelled().await;
    drop(pg);
    Ok(())
}

/// Runs one `ctl` command and prints its output.
#[allow(clippy::print_stdout)] // the operator tool's output
pub async fn run_ctl(settings: Settings, args: crate::ctl::CtlArgs) -> anyhow::Result<()> {
    if let crate::ctl::CtlCommand::Routes { tenant, session } = &args.command {
        print!("{}", crate::ctl::routes(&settings, tenant, session.as_deref(), args.json)?);
        return Ok(());
    }
    let redis = Redis::connect(&settings.redis)
        .await
        .with_context(|| format!("cannot connect to Redis (redis.url = {})", redact(&settings.redis.url)))?;
    let store = Store::new(redis, &settings);
    let out = match args.json {
        true => format!("{}\n", crate::ctl::run_json(&store, args.command).await?),
        false => crate::ctl::run(&store, args.command).await?,
    };
    print!("{out}");
    store.redis().quit().await;
    Ok(())
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}
