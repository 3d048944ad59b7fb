//! The gateway (socket node): client transports in front of Redis.
//!
//! Stateless: every session's truth is in Redis, so any gateway can serve any client and a
//! restarted gateway loses nothing. The caller hands in the listener and the shutdown token;
//! [`Gateway::serve`] returns after draining.

mod commands;
mod error;
mod feed;
mod http;
pub mod hub;
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

pub use error::ApiError;
pub use ws::close;

use crate::settings::{ms, Settings};
use crate::store::{Store, StoreError};
use hub::Hub;

/// State shared by the gateway's handlers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct App(Arc<AppInner>);

pub(crate) struct AppInner {
    pub settings: Settings,
    pub store: Store,
    pub hub: Hub,
    /// Tenant of every session (authentication will assign it per token).
    pub tenant: String,
    /// One permit per open client connection (`gateway.max_connections`).
    pub connections: Arc<Semaphore>,
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

/// Held by an open connection: its slot and its gauge.
pub(crate) struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    transport: &'static str,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::GATEWAY_CONNECTIONS, "transport" => self.transport).decrement(1.0);
    }
}

impl App {
    /// Takes a connection slot, or refuses when the gateway is full or draining.
    pub(crate) fn admit(&self, transport: &'static str) -> Result<ConnGuard, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Overloaded("this gateway is draining; reconnect"));
        }
        let permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded("this gateway is at its connection limit"))?;
        metrics::gauge!(crate::metrics::GATEWAY_CONNECTIONS, "transport" => transport).increment(1.0);
        metrics::counter!(crate::metrics::GATEWAY_CONNECTS, "transport" => transport).increment(1);
        Ok(ConnGuard { _permit: permit, transport, _task: self.tracker.token() })
    }
}

/// A gateway ready to serve.
pub struct Gateway {
    app: App,
}

impl Gateway {
    /// Builds the gateway: connects its pub/sub client and starts the hub.
    pub async fn build(settings: Settings, store: Store, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let sub = store.redis().subscriber().await?;
        let g = &settings.gateway;
        let hub = Hub::start(sub, g.send_queue_events, g.send_queue_bytes, shutdown.clone());
        let app = App(Arc::new(AppInner {
            tenant: g.tenant.clone(),
            connections: Arc::new(Semaphore::new(g.max_connections)),
            settings,
            store,
            hub,
            shutdown,
            tracker: TaskTracker::new(),
        }));
        Ok(Self { app })
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/ws", get(ws::upgrade))
            .route("/v1/sessions/{id}/events", get(sse::events))
            .route("/v1/sessions/{id}/messages", post(rest::send))
            .route("/v1/sessions/{id}/turns/{turn_id}/cancel", post(rest::cancel))
            .merge(http::router())
            .layer(DefaultBodyLimit::max(self.app.settings.gateway.max_frame_bytes))
            .with_state(self.app.clone())
    }

    /// Serves on `listener` until the shutdown token fires, then drains: every socket is told to
    /// reconnect and closed, within `gateway.drain_timeout_ms`.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shutdown = self.app.shutdown.clone();
        let router = self.router();
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await?;
        self.app.tracker.close();
        let drain = ms(self.app.settings.gateway.drain_timeout_ms);
        if tokio::time::timeout(drain, self.app.tracker.wait()).await.is_err() {
            tracing::warn!("drain deadline passed with connections still open");
        }
        Ok(())
    }
}
