//! The gateway (socket node): client transports in front of Redis.
//!
//! Stateless: every session's truth is in Redis, so any gateway can serve any client and a
//! restarted gateway loses nothing. The caller hands in the listener and the shutdown token;
//! [`Gateway::serve`] returns after draining.

mod admission;
mod admission_settings;
mod aisdk;
mod authn;
mod commands;
mod connect_rate;
mod conversations;
mod error;
mod feed;
mod follow;
mod http;
pub mod hub;
mod ingress;
mod knowledge;
mod limits;
mod linger;
mod listener;
mod openai;
mod opening;
mod opens;
mod origin;
mod outbox;
mod prejoin;
mod rest;
mod sse;
mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admission_settings::AdmissionSettings;
pub use error::close;
pub use error::ApiError;
pub use ingress::IngressSettings;
pub use limits::LimitSettings;
pub use linger::bind;

use crate::auth::{AuthMode, Authenticator, Identity};
use crate::quota::Quotas;
use crate::settings::Settings;
use crate::settings_base::{ms, SettingsError};
use crate::store::{Store, StoreError};
use admission::Admission;
use hub::Hub;
use limits::{GatewayLimits, UserSlot};
use opens::ClientIp;
use origin::Origins;

/// How often idle users' HTTP rate-limit state is dropped.
const FORGET_IDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a gateway could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// State shared by the gateway's handlers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct App(Arc<AppInner>);

pub(crate) struct AppInner {
    pub settings: Settings,
    /// Shared, not cloned, by every connection's feed: a `Store` holds several strings.
    pub store: Arc<Store>,
    pub hub: Hub,
    /// Turns a request's credentials into an identity (tenant, user).
    pub auth: Authenticator,
    /// Per-connection and per-user limits of this gateway.
    pub limits: GatewayLimits,
    /// Per-tenant quotas, shared through Redis.
    pub quotas: Quotas,
    /// The PostgreSQL archive (conversations API, restores), when `archive.url` is set.
    pub archive: Option<crate::archive::Archive>,
    /// Refuses sends while a partition's queue is too long or old.
    pub admission: Admission,
    /// New sessions with their channels already joined, for stateless OpenAI requests.
    pub prejoins: prejoin::Prejoins,
    /// Which web pages may use the gateway (`gateway.allowed_origins`).
    pub origins: Origins,
    /// One permit per open client connection (`gateway.max_connections`).
    pub connections: Arc<Semaphore>,
    /// New connections admitted per second (`gateway.connects_per_sec`).
    pub connect_rate: connect_rate::ConnectRate,
    /// Fired on shutdown; every socket task watches it.
    pub shutdown: CancellationToken,
    /// Socket tasks, awaited on drain.
    pub tracker: TaskTracker,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Held by an open connection: its slots and its gauge.
pub(crate) struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _user: Option<UserSlot>,
    transport: &'static str,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::GATEWAY_CONNECTIONS, "transport" => self.transport).decrement(1.0);
    }
}

impl App {
    /// Counts a session open against the client address's and the user's open rate, then takes
    /// a connection slot of the gateway and of the user; refuses when the gateway is full or
    /// draining, or the client opens too fast or has all of its connections open. In dev mode
    /// every client is the same local user, so the per-IP and per-user bounds do not apply there.
    pub(crate) fn admit(&self, transport: &'static str, who: &Identity, ip: ClientIp) -> Result<ConnGuard, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Overloaded("this gateway is draining; reconnect"));
        }
        if self.auth.mode() == AuthMode::Jwt {
            self.limits.open(ip.0, &who.tenant, &who.user).map_err(|(scope, retry_after_ms)| {
                metrics::counter!(crate::metrics::GATEWAY_OPENS_LIMITED, "scope" => scope.label()).increment(1);
                ApiError::OpensLimited { retry_after_ms }
            })?;
        }
        self.connect_rate.admit().map_err(|retry_after_ms| ApiError::ConnectStorm { retry_after_ms })?;
        let user = match self.auth.mode() {
            AuthMode::Dev => None,
            AuthMode::Jwt => Some(
                self.limits
                    .connect(&who.tenant, &who.user)
                    .ok_or(ApiError::TooManyConnections { limit: self.limits.settings().max_connections_per_user })?,
            ),
        };
        let permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded("this gateway is at its connection limit"))?;
        metrics::gauge!(crate::metrics::GATEWAY_CONNECTIONS, "transport" => transport).increment(1.0);
        metrics::counter!(crate::metrics::GATEWAY_CONNECTS, "transport" => transport).increment(1);
        Ok(ConnGuard { _permit: permit, _user: user, transport, _task: self.tracker.token() })
    }
}

/// A gateway ready to serve.
pub struct Gateway {
    app: App,
}

impl Gateway {
    /// Builds the gateway: loads the auth keys, connects its pub/sub client, and starts the hub
    /// and the admission refresher.
    pub async fn build(settings: Settings, store: Store, shutdown: CancellationToken) -> Result<Self, GatewayError> {
        let g = &settings.gateway;
        settings.auth.validate(g.listen)?;
        let auth = Authenticator::new(&settings.auth, &g.tenant)
            .map_err(|e| SettingsError::Invalid { key: "auth.keys", reason: e.to_string() })?;
        auth.prefetch().await;
        let dev_local = settings.auth.mode == AuthMode::Dev && !settings.auth.force_dev_on_non_loopback;
        let origins = Origins::new(&g.allowed_origins, dev_local)?;
        let sub = store.redis().subscriber().await?;
        let limits = hub::HubLimits {
            queue_events: g.send_queue_events,
            queue_bytes: g.send_queue_bytes,
            log_reads: g.max_concurrent_catchups,
            subscribe_timeout: ms(settings.redis.command_timeout_ms + settings.redis.reconnect_max_delay_ms),
            cluster_check: ms(g.cluster_check_ms),
        };
        let hub = Hub::start(sub, limits, shutdown.clone());
        let admission = Admission::start(g.admission.clone(), store.clone(), shutdown.clone());
        let archive = match settings.archive.enabled() {
            true => Some(
                crate::archive::Archive::new(&settings.archive)
                    .map_err(|e| SettingsError::Invalid { key: "archive.url", reason: e.to_string() })?,
            ),
            false => None,
        };
        if archive.is_some() {
            crate::metrics_catalog::register_restores();
        }
        let ing = &g.ingress;
        let prejoins =
            prejoin::Prejoins::new(hub.clone(), store.keys().clone(), ing.prejoined_per_tenant, ing.prejoined_tenants);
        let app = App(Arc::new(AppInner {
            prejoins,
            archive,
            auth,
            limits: GatewayLimits::new(&g.limits),
            quotas: Quotas::new(settings.quota.clone()),
            admission,
            origins,
            connections: Arc::new(Semaphore::new(g.max_connections)),
            connect_rate: connect_rate::ConnectRate::new(g.connects_per_sec, g.connect_burst),
            settings,
            store: Arc::new(store),
            hub,
            shutdown,
            tracker: TaskTracker::new(),
        }));
        let janitor = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tokio::select! {
                    _ = janitor.shutdown.cancelled() => return,
                    _ = tick.tick() => janitor.limits.forget_idle(),
                }
            }
        });
        Ok(Self { app })
    }

    /// The HTTP routes. Every request passes the origin check; CORS (outermost) answers
    /// preflights and labels responses for the allowed origins.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/ws", get(ws::upgrade))
            .route("/v1/sessions/{id}/events", get(sse::events))
            .route("/v1/sessions/{id}/messages", post(rest::send).get(conversations::messages))
            .route("/v1/sessions", get(conversations::list))
            .route("/v1/sessions/{id}", axum::routing::patch(conversations::patch).delete(conversations::delete))
            .route("/v1/export", get(conversations::export))
            .route("/v1/sessions/{id}/turns/{turn_id}/cancel", post(rest::cancel))
            .merge(http::router())
            .merge(ingress::router(&self.app.settings.gateway.ingress))
            .merge(knowledge::router(&self.app.settings.retrieval))
            .layer(DefaultBodyLimit::max(self.app.settings.gateway.max_frame_bytes))
            .layer(axum::middleware::from_fn_with_state(self.app.clone(), origin::check))
            .layer(self.app.origins.cors())
            .with_state(self.app.clone())
    }

    /// Serves on `listener` until the shutdown token fires, then drains: every socket is told to
    /// reconnect and closed, within `gateway.drain_timeout_ms`.
    /// In dev mode, a listener on a non-loopback address is refused (like `gateway.listen` in
    /// settings) unless `auth.force_dev_on_non_loopback` is set.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let a = &self.app.settings.auth;
        let addr = listener.local_addr()?;
        if a.mode == AuthMode::Dev && !a.force_dev_on_non_loopback && !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "auth.mode = \"dev\" refuses the non-loopback address {addr}; see auth.force_dev_on_non_loopback"
                ),
            ));
        }
        let g = &self.app.settings.gateway;
        let drain = ms(g.drain_timeout_ms);
        let header_timeout = ms(g.header_read_timeout_ms);
        let limits = linger::LingerLimits {
            deadline: ms(g.linger_ms),
            max_bytes: g.linger_bytes,
            max_sockets: g.max_lingering,
            send_buffer: g.tcp_send_buffer_bytes,
        };
        let listener = linger::LingeringListener::new(listener, limits);
        let openings = opening::Openings::new(g.max_opening_connections);
        listener::serve(listener, self.router(), header_timeout, openings, self.app.shutdown.clone(), drain).await;
        self.app.tracker.close();
        if tokio::time::timeout(drain, self.app.tracker.wait()).await.is_err() {
            tracing::warn!("drain deadline passed with connections still open");
        }
        Ok(())
    }
}
