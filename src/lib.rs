//! chatfleet: real-time LLM chat streaming at scale over Redis Streams.
//!
//! # Layout
//!
//! - [`settings`]: one typed, validated settings tree (`config/`, `CHATFLEET__…` variables);
//!   [`settings_base`]: its leaf (the error type, `ms`), which the section modules import.
//! - [`keys`]: Redis key names; every key of a partition shares one Cluster slot.
//! - [`payload`]: MessagePack payloads stored in Redis (versioned), written by `lua/`.
//! - [`protocol`]: the client protocol v1 (JSON frames), see docs/protocol.md.
//! - [`store`]: Redis connections and one typed call per function of `lua/chatfleet.lua`.
//! - [`auth`]: who a client is (JWT or local `dev`), and so which tenant it acts for.
//! - [`quota`]: per-tenant quotas shared through Redis (turns in flight, turns per minute).
//! - [`gateway`]: the socket node: WebSocket (and later SSE, long-poll), the pub/sub hub, feeds.
//! - [`worker`]: claims turns, streams the model, coalesces deltas, leases, reclaims.
//! - [`model`]: the model trait and the built-in demo model.
//! - [`upstream`]: real model upstreams (OpenAI-compatible, Anthropic), routing, fallback,
//!   context packing and summaries; [`tools`]: the tools a model may call.
//! - [`guard`]: output guardrails (a streaming redaction filter, a moderation hook).
//! - [`archive`]: finished turns in PostgreSQL (conversations that outlive Redis), the
//!   archiver, retention; [`local_postgres`]: a private PostgreSQL for `dev` and tests.
//! - [`retrieval`]: knowledge collections in the archive's PostgreSQL, searched at packing time.
//! - [`app`]: assembles the roles (`gateway`, `worker`, `dev`) for the binary.
//! - [`ctl`], [`queue`]: the operator tool and per-partition queue statistics.
//! - [`redis_version`]: Redis 7 or newer, checked at start.
//! - [`local_redis`], [`local_cluster`]: a private redis-server or Redis Cluster for `dev` and tests.
//! - `bench` (cargo feature `bench`, on by default): `chatfleet bench`, the load generator and
//!   benchmark scenarios (docs/benchmarks.md); production builds leave it out.
//! - [`metrics`], [`telemetry`], [`trace`], [`shutdown`]: operations.

// Output goes through `tracing`; a stray print is a debug leftover. The few commands whose
// output is the terminal text allow it where they print.
#![deny(clippy::print_stderr, clippy::print_stdout)]

pub mod app;
pub mod archive;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod ctl;
pub mod gateway;
pub mod guard;
pub mod keys;
pub mod local_cluster;
pub mod local_postgres;
pub mod local_redis;
pub mod media;
pub mod metrics;
pub mod metrics_catalog;
pub mod model;
pub mod payload;
pub mod protocol;
pub mod quota;
pub mod redis_version;
pub mod retrieval;
pub mod settings;
pub mod settings_base;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod trace;
pub mod upstream;
pub mod worker;
