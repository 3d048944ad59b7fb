//! One typed settings tree for every process.
//!
//! Sources, later ones winning: `config/default.toml` (compiled in, so the binary runs from any
//! directory), an optional file given with `--config`, then environment variables
//! `CHATFLEET__SECTION__KEY`. [`Settings::validate`] runs at start-up, and an invalid value stops
//! the process with a message naming the setting. Tests build a `Settings` and change its fields;
//! they never touch the environment.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

// Re-exported so `crate::settings::{ms, SettingsError}` keeps working for code outside the
// settings tree; the section modules import them from the leaf `settings_base`.
pub use crate::model::demo::DemoModelSettings;
pub use crate::settings_base::{ms, SettingsError};

/// Every setting of chatfleet.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub redis: RedisSettings,
    pub session: SessionSettings,
    pub gateway: GatewaySettings,
    pub worker: WorkerSettings,
    pub model: ModelSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    /// Authentication: `dev` (local only) or JWT with the accepted keys.
    pub auth: crate::auth::AuthSettings,
    /// Per-tenant quotas shared by every gateway through Redis.
    pub quota: crate::quota::QuotaSettings,
    /// Model upstreams by name (`[upstreams.<name>]`), see [`crate::upstream::settings`].
    #[serde(default)]
    pub upstreams: crate::upstream::settings::UpstreamMap,
    /// Which upstreams answer a turn.
    #[serde(default)]
    pub routing: crate::upstream::settings::RoutingSettings,
    /// Prompt template, context packing and summaries.
    #[serde(default)]
    pub context: crate::upstream::settings::ContextSettings,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: crate::tools::settings::ToolsSettings,
    /// The PostgreSQL archive of finished turns (off unless `archive.url` is set).
    #[serde(default)]
    pub archive: crate::archive::ArchiveSettings,
    /// What a message's attachments may refer to (media by reference; off until
    /// `media.url_prefixes` names the product's storage).
    #[serde(default)]
    pub media: crate::media::MediaSettings,
    /// Output guardrails: redaction and moderation (`[guard]`, docs/guardrails.md).
    #[serde(default)]
    pub guard: crate::guard::GuardSettings,
    /// Knowledge collections searched at packing time (needs the archive).
    #[serde(default)]
    pub retrieval: crate::retrieval::RetrievalSettings,
    /// Per-tenant overrides, by tenant name (`[tenants.acme]`).
    #[serde(default)]
    pub tenants: std::collections::HashMap<String, TenantSettings>,
}

/// What happens to a running turn when every client of its session has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Keep generating, so a client that comes back finds the whole answer.
    Continue,
    /// Stop the turn after `session.disconnect_grace_ms`, to save upstream cost.
    Cancel,
}

/// Settings that one tenant may override.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TenantSettings {
    pub on_disconnect: Option<OnDisconnect>,
    /// Guardrail overrides (`[tenants.<name>.guard]`); unset fields take `[guard]`'s.
    #[serde(default)]
    pub guard: Option<crate::guard::GuardOverride>,
}

/// Redis connection and key layout.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` (TLS) or `redis-cluster://` URL.
    pub url: String,
    /// Prefix of every key. Lets several deployments (or tests) share one Redis.
    pub key_prefix: String,
    /// Number of partitions P. Fixed for a deployment's life: it decides where sessions live.
    pub partitions: u16,
    /// Connections in the command pool of each process (FCALLs, reads).
    pub pool_size: usize,
    /// Time allowed to open a connection.
    pub connect_timeout_ms: u64,
    /// Time allowed for one non-blocking command before it fails with a timeout.
    pub command_timeout_ms: u64,
    /// How long a starting gateway or worker keeps retrying (with backoff, not ready meanwhile)
    /// while Redis is not up or a Cluster is still forming, before it exits.
    pub startup_deadline_ms: u64,
    /// Longest pause between reconnect attempts (exponential backoff up to this).
    pub reconnect_max_delay_ms: u64,
    /// Capacity of the pub/sub broadcast buffer; a slower reader lags and catches up from logs.
    pub broadcast_capacity: usize,
    /// Times a command is sent before its caller sees the error, when connections drop while
    /// it is in flight. Every call is idempotent, so a resend never applies a write twice.
    pub max_command_attempts: u32,
    /// Group commit: most ops (deltas, starts, finishes, enqueues, opens…) one `cf3_batch` call
    /// carries. A batch is whatever queued while the lane's previous call was in flight, so an
    /// idle process sends each op at once.
    pub batch_max_ops: usize,
    /// The same for control lanes (enqueue, start, finish, open, detach, cancel…), which are
    /// kept apart from the stream of deltas so a user's ack or `turn_started` never waits behind
    /// a call carrying many deltas. Small, so one control call stays short.
    pub batch_control_max_ops: usize,
    /// Ops that may wait in one queue of lanes (a class's on a single Redis, a partition's class
    /// in Cluster); a caller past this waits (backpressure).
    pub batch_queue: usize,
    /// Lanes per class (stream, control) of a process on a standalone Redis: calls in flight
    /// at once are twice this, and an op goes with the next call of whichever lane of its class
    /// is free. In Cluster every partition has a lane of each class, since a call may touch one
    /// slot only.
    pub batch_lanes: usize,
}

/// Per-session storage bounds.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    /// Idle lifetime of a session's keys, refreshed on activity.
    pub ttl_secs: u64,
    /// Approximate number of events kept in a session log for replay (XADD MAXLEN ~).
    pub log_max_events: u64,
    /// Messages kept in a session's history (and handed to the model and to snapshots).
    pub history_max_messages: u64,
    /// Largest replay sent on resume; a client further behind gets a snapshot.
    pub replay_max_events: u64,
    /// Largest user message text, in bytes.
    pub max_message_bytes: usize,
    /// A session belongs to the user who created it: another user of the tenant cannot open it
    /// or send on it. `false` shares every session across its tenant. A token whose `sessions`
    /// claim names a session may open it either way.
    pub bind_to_user: bool,
    /// Sends remembered per session for deduplication by `client_msg_id` (a retried send within
    /// the last this-many gets its original ack); older ones are forgotten.
    pub dedupe_max_sends: u64,
    /// Default policy for a running turn whose session has no client attached (WebSocket or SSE).
    pub on_disconnect: OnDisconnect,
    /// With `on_disconnect = "cancel"`: how long a session may stay unwatched before its turn stops
    /// (a phone switching networks reconnects well within this).
    pub disconnect_grace_ms: u64,
}

/// Gateway (socket node) limits and timeouts.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    /// Address of the client-facing HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Tenant of every session until authentication assigns one per token.
    pub tenant: String,
    /// Connections the kernel queues for the gateway to accept (capped by `net.core.somaxconn`);
    /// in a reconnect storm, connections beyond it wait a second for a SYN retransmit.
    pub listen_backlog: u32,
    /// Open client connections (all transports) one gateway accepts; more get 503.
    pub max_connections: usize,
    /// Largest WebSocket frame or message a client may send; refused before it is buffered.
    pub max_frame_bytes: usize,
    /// Events queued for one connection before it counts as too slow.
    pub send_queue_events: usize,
    /// Bytes queued for one connection before it counts as too slow and is closed (4008).
    pub send_queue_bytes: usize,
    /// Session-log reads (catch-ups after a pub/sub loss, gap fills, re-snapshots) one gateway
    /// runs at once; the others wait their turn while their live events keep queueing.
    pub max_concurrent_catchups: usize,
    /// Bytes of a WebSocket's read buffer, allocated per socket for its whole life: also the
    /// most read from the socket per system call (a larger frame takes several reads).
    pub ws_read_buffer_bytes: usize,
    /// Interval of WebSocket pings.
    pub ping_interval_ms: u64,
    /// A peer that sends nothing (no pong either) for this long is closed.
    pub pong_timeout_ms: u64,
    /// Longest time one frame write may take before the connection is dropped.
    pub write_timeout_ms: u64,
    /// Time a new WebSocket has to send `hello`.
    pub hello_timeout_ms: u64,
    /// Longest time from a connection's start (or its previous response) to the end of a
    /// request's headers; a slower client (slowloris) is disconnected. Also ends idle keep-alive
    /// connections.
    pub header_read_timeout_ms: u64,
    /// Origins (`https://app.example.com`) whose pages may use this gateway: they pass the
    /// `Origin` check on WebSocket and HTTP routes and get CORS headers. The gateway's own origin
    /// always may; `"*"` allows any (refused in dev mode). See docs/security.md.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Interval of SSE comment heartbeats.
    pub sse_heartbeat_ms: u64,
    /// Upper bound of a long-poll request's `wait_ms`.
    pub longpoll_max_wait_ms: u64,
    /// On shutdown, time given to connections to be told `reconnect` and closed.
    pub drain_timeout_ms: u64,
    /// Upper bound of the `coalesce_ms` a client may ask for in `hello`.
    pub max_client_coalesce_ms: u64,
    /// Log the text of user messages (debug level). Off by default: message text is the users'
    /// data and must not reach log pipelines unless someone is debugging on purpose.
    pub log_message_text: bool,
    /// A closed connection's socket first sends FIN, then reads and discards the peer's input for
    /// at most this long (a lingering close: closing with unread input sends RST, and the peer may
    /// lose the close frame or error response that is still in its receive buffer).
    pub linger_ms: u64,
    /// Most bytes a lingering socket reads and discards before it closes anyway.
    pub linger_bytes: usize,
    /// Sockets lingering at once; past this a closed socket is closed at once.
    pub max_lingering: usize,
    /// On a Redis Cluster, how often the gateway reads the slot map to notice a slot that moved
    /// (resharding, failover): its session channels are then subscribed again on the new node,
    /// and connections catch up from their logs. One CLUSTER SLOTS per gateway per interval.
    pub cluster_check_ms: u64,
    /// Kernel send buffer of each accepted socket (SO_SNDBUF, bytes; 0 = the kernel's autotuning,
    /// up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB on most Linux). Bounds the kernel memory a client
    /// that stops reading can pin, and how much it can fall behind before its queue
    /// (`send_queue_bytes`) fills and it is closed 4008. Chat text needs little.
    pub tcp_send_buffer_bytes: usize,
    /// New connections (all transports) one gateway admits per second, sustained, with
    /// `connect_burst` above it; more are refused with 503 and a `Retry-After`, so a reconnect
    /// storm is served at a pace the gateway keeps up with instead of queueing without bound.
    pub connects_per_sec: u32,
    /// Connections admitted at once above `connects_per_sec`.
    pub connect_burst: u32,
    /// Connections in their opening phase at once: from accept to the first response, or for a
    /// WebSocket to its `welcome`. Others wait as accepted sockets, in order, for at most
    /// `header_read_timeout_ms`. Bounds the memory a reconnect storm allocates at once, and so
    /// what the allocator keeps of it afterwards (`src/gateway/opening.rs`).
    pub max_opening_connections: usize,
    /// The `retry:` an SSE stream gives the browser: how long `EventSource` waits before it
    /// reconnects (and resumes from `Last-Event-ID`) after the stream ends.
    pub sse_retry_ms: u64,
    /// Per-connection and per-user limits (`[gateway.limits]`).
    pub limits: crate::gateway::LimitSettings,
    /// Refusing new sends while the queue is too long (`[gateway.admission]`).
    pub admission: crate::gateway::AdmissionSettings,
    /// The OpenAI Chat Completions and AI SDK ingresses (`[gateway.ingress]`).
    pub ingress: crate::gateway::IngressSettings,
}

/// Worker concurrency, coalescing and lease timing.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Turns one worker process runs at once.
    pub max_concurrent_turns: usize,
    /// BLOCK of the XREADGROUP that waits for turns.
    pub read_block_ms: u64,
    /// Window in which tokens after the first are merged into one delta.
    pub coalesce_ms: u64,
    /// Largest delta; a longer run of text is cut at a character boundary.
    pub max_delta_bytes: usize,
    /// A running turn's lease; a turn whose lease expired is taken over by another worker.
    pub lease_ms: u64,
    /// While the model is silent, the lease is extended at this interval.
    pub heartbeat_ms: u64,
    /// How often each worker sweeps partitions for expired leases.
    pub sweep_interval_ms: u64,
    /// Pending entries examined per partition per sweep.
    pub sweep_batch: u64,
    /// Deliveries of a turn before it is dead-lettered.
    pub max_attempts: u32,
    /// On shutdown, time running turns get to finish before they are released to other workers.
    pub drain_timeout_ms: u64,
    /// Longest a whole turn may run.
    pub turn_timeout_ms: u64,
    /// Consumers (exited workers) idle this long with nothing pending are removed from the group
    /// by the sweep; 0 keeps them.
    pub consumer_gc_idle_ms: u64,
    /// Entries kept in each partition's dead-letter stream (XADD MAXLEN ~): an upstream outage
    /// must not fill Redis with dead letters.
    pub dead_letter_max_len: u64,
    /// Retries of an upstream that fails before its first token (connect error, 429, 5xx).
    pub upstream_retries: u32,
    /// First retry delay; doubles per retry, with full jitter, up to `upstream_retry_max_ms`.
    pub upstream_retry_base_ms: u64,
    /// Largest retry delay.
    pub upstream_retry_max_ms: u64,
}

/// Which model answers, and its settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSettings {
    /// `demo` (built in, no API key).
    pub kind: String,
    pub demo: DemoModelSettings,
}

/// Prometheus exporter.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// Address of the `/metrics` listener, separate from client traffic.
    pub listen: SocketAddr,
    /// How often the elected worker exports per-partition queue gauges.
    pub queue_interval_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: String,
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    pub filter: String,
    /// OTLP/HTTP traces endpoint (e.g. `http://otel-collector:4318/v1/traces`); empty = no export.
    /// Needs a build with `--features otlp`.
    #[serde(default)]
    pub otlp_endpoint: String,
}

/// Settings that are lists. From the environment they are comma-separated
/// (`CHATFLEET__ROUTING__DEFAULT=openai,demo`); only these keys are split, so a comma in any
/// other value (a system prompt) stays text. Add a list setting here to make it settable so.
pub const ENV_LIST_KEYS: &[&str] = &["routing.default", "media.content_types", "media.url_prefixes"];

/// `CHATFLEET__SECTION__KEY` variables, typed (numbers, booleans) and with [`ENV_LIST_KEYS`]
/// split at commas.
fn env_source(env: Option<std::collections::HashMap<String, String>>) -> config::Environment {
    let source = config::Environment::with_prefix("CHATFLEET")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(env);
    ENV_LIST_KEYS.iter().fold(source, |s, key| s.with_list_parse_key(key))
}

impl Settings {
    /// Loads defaults, then `file` if given, then `CHATFLEET__…` variables, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, None)
    }

    /// [`Self::load`] with the environment given as a map (`None`: the process environment).
    pub fn load_from(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let settings: Settings = builder.add_source(env_source(env)).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults, for tests and tools that adjust fields directly.
    pub fn defaults() -> Self {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("config/default.toml is valid");
        settings
    }

    /// The disconnect grace to enforce for `tenant`'s turns, or 0 to keep generating.
    pub fn abandon_ms(&self, tenant: &str) -> u64 {
        let policy = self.tenants.get(tenant).and_then(|t| t.on_disconnect).unwrap_or(self.session.on_disconnect);
        match policy {
            OnDisconnect::Continue => 0,
            OnDisconnect::Cancel => self.session.disconnect_grace_ms.max(1),
        }
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), SettingsError> {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::Invalid { key, reason: reason.into() })
            }
        }
        let r = &self.redis;
        check(
            ["redis://", "rediss://", "redis-cluster://", "redis+unix://"].iter().any(|s| r.url.starts_with(s)),
            "redis.url",
            "must start with redis://, rediss://, redis-cluster:// or redis+unix://",
        )?;
        check(crate::keys::is_valid_component(&r.key_prefix), "redis.key_prefix", "1-64 characters of [A-Za-z0-9_.-]")?;
        check((1..=4096).contains(&r.partitions), "redis.partitions", "must be 1..=4096")?;
        check(r.pool_size >= 1, "redis.pool_size", "must be at least 1")?;
        check(r.command_timeout_ms > 0, "redis.command_timeout_ms", "must be > 0")?;
        check(r.broadcast_capacity >= 16, "redis.broadcast_capacity", "must be at least 16")?;
        check((1..=10).contains(&r.max_command_attempts), "redis.max_command_attempts", "must be 1..=10")?;
        check((1..=4096).contains(&r.batch_max_ops), "redis.batch_max_ops", "must be 1..=4096")?;
        check(
            (1..=r.batch_max_ops).contains(&r.batch_control_max_ops),
            "redis.batch_control_max_ops",
            "must be 1..=redis.batch_max_ops",
        )?;
        check(r.batch_queue >= r.batch_max_ops, "redis.batch_queue", "must be at least redis.batch_max_ops")?;
        check((1..=256).contains(&r.batch_lanes), "redis.batch_lanes", "must be 1..=256")?;
        let s = &self.session;
        check(s.ttl_secs >= 60, "session.ttl_secs", "must be at least 60")?;
        check(s.log_max_events >= 100, "session.log_max_events", "must be at least 100")?;
        check(s.history_max_messages >= 2, "session.history_max_messages", "must be at least 2")?;
        check(
            s.replay_max_events >= 1 && s.replay_max_events <= s.log_max_events,
            "session.replay_max_events",
            "must be 1..=session.log_max_events",
        )?;
        check(s.max_message_bytes >= 1, "session.max_message_bytes", "must be at least 1")?;
        check(s.dedupe_max_sends >= 16, "session.dedupe_max_sends", "must be at least 16")?;
        let g = &self.gateway;
        check(crate::keys::is_valid_component(&g.tenant), "gateway.tenant", "1-64 characters of [A-Za-z0-9_.-]")?;
        check(g.max_connections >= 1, "gateway.max_connections", "must be at least 1")?;
        check(
            g.max_frame_bytes >= s.max_message_bytes,
            "gateway.max_frame_bytes",
            "must be at least session.max_message_bytes",
        )?;
        check(g.send_queue_events >= 16, "gateway.send_queue_events", "must be at least 16")?;
        check(g.send_queue_bytes >= 65536, "gateway.send_queue_bytes", "must be at least 65536")?;
        check(g.max_concurrent_catchups >= 1, "gateway.max_concurrent_catchups", "must be at least 1")?;
        check(g.ws_read_buffer_bytes >= 64, "gateway.ws_read_buffer_bytes", "must be at least 64")?;
        check(g.linger_ms <= 60_000, "gateway.linger_ms", "must be at most 60000")?;
        check(g.connects_per_sec >= 1, "gateway.connects_per_sec", "must be at least 1")?;
        check(g.connect_burst >= 1, "gateway.connect_burst", "must be at least 1")?;
        check(g.max_opening_connections >= 1, "gateway.max_opening_connections", "must be at least 1")?;
        check(
            g.pong_timeout_ms > g.ping_interval_ms,
            "gateway.pong_timeout_ms",
            "must exceed gateway.ping_interval_ms",
        )?;
        check(g.header_read_timeout_ms >= 100, "gateway.header_read_timeout_ms", "must be at least 100")?;
        g.limits.validate()?;
        g.admission.validate()?;
        g.ingress.validate()?;
        // `auth` is validated (and its key files read) where it is used, in `Gateway::build`:
        // workers load the same file but neither need nor mount the signing keys.
        self.quota.validate(self.worker.turn_timeout_ms)?;
        let w = &self.worker;
        check(w.max_concurrent_turns >= 1, "worker.max_concurrent_turns", "must be at least 1")?;
        check((100..=10_000).contains(&w.read_block_ms), "worker.read_block_ms", "must be 100..=10000")?;
        check(w.max_delta_bytes >= 16, "worker.max_delta_bytes", "must be at least 16")?;
        check(
            w.heartbeat_ms * 2 <= w.lease_ms,
            "worker.heartbeat_ms",
            "must be at most half of worker.lease_ms, so one lost heartbeat does not lose the lease",
        )?;
        // A heartbeat that waits a whole command timeout (the longest a call waits before it
        // fails) still lands before the lease it renews runs out: a Redis stall the client sits
        // through never costs a live turn its lease (docs/operations.md, "Redis stalls").
        check(
            w.lease_ms >= self.redis.command_timeout_ms + w.heartbeat_ms,
            "worker.lease_ms",
            "must be at least redis.command_timeout_ms + worker.heartbeat_ms, so a Redis stall shorter than the command timeout never takes a live turn from its worker",
        )?;
        check(w.sweep_interval_ms >= 50, "worker.sweep_interval_ms", "must be at least 50")?;
        check(w.max_attempts >= 1, "worker.max_attempts", "must be at least 1")?;
        check(w.dead_letter_max_len >= 100, "worker.dead_letter_max_len", "must be at least 100")?;
        check(
            w.consumer_gc_idle_ms == 0 || w.consumer_gc_idle_ms > w.read_block_ms * 2,
            "worker.consumer_gc_idle_ms",
            "must be 0 (off) or well above worker.read_block_ms, or live idle workers churn",
        )?;
        check(["demo"].contains(&self.model.kind.as_str()), "model.kind", "must be one of: demo")?;
        crate::upstream::settings::validate(
            &self.upstreams,
            &self.routing,
            &self.context,
            self.session.max_message_bytes,
            self.retrieval.pinned_bytes(self.context.approx_bytes_per_token),
        )?;
        crate::tools::settings::validate(&self.tools)?;
        self.archive.validate()?;
        self.media.validate()?;
        crate::guard::validate(self)?;
        self.retrieval.validate()?;
        check(
            ["pretty", "json"].contains(&self.telemetry.format.as_str()),
            "telemetry.format",
            "must be `pretty` or `json`",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::defaults().validate().unwrap();
    }

    #[test]
    fn a_tenant_can_override_the_disconnect_policy() {
        let mut s = Settings::defaults();
        assert_eq!(s.abandon_ms("any"), 0, "keep generating by default");
        s.tenants.insert(
            "frugal".into(),
            TenantSettings { on_disconnect: Some(OnDisconnect::Cancel), ..Default::default() },
        );
        assert_eq!(s.abandon_ms("frugal"), s.session.disconnect_grace_ms);
        assert_eq!(s.abandon_ms("other"), 0);
    }

    fn env(vars: &[(&str, &str)]) -> Option<std::collections::HashMap<String, String>> {
        Some(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn a_list_setting_is_split_at_commas_from_the_environment_and_other_values_are_not() {
        let file = std::env::temp_dir().join(format!("chatfleet-list-{}.toml", std::process::id()));
        std::fs::write(&file, "[upstreams.second]\nkind = \"demo\"\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("CHATFLEET__ROUTING__DEFAULT", "second,demo"),
                ("CHATFLEET__CONTEXT__SYSTEM_PROMPT", "Be brief, kind, exact."),
                ("CHATFLEET__REDIS__PARTITIONS", "32"),
            ]),
        );
        std::fs::remove_file(&file).unwrap();
        let s = s.unwrap();
        assert_eq!(s.routing.default, vec!["second".to_string(), "demo".to_string()]);
        assert_eq!(s.context.system_prompt, "Be brief, kind, exact.");
        assert_eq!(s.redis.partitions, 32);
    }

    #[test]
    fn a_lease_within_reach_of_the_command_timeout_is_refused_by_name() {
        let mut s = Settings::defaults();
        s.validate().expect("the defaults are valid");
        s.redis.command_timeout_ms = s.worker.lease_ms;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("worker.lease_ms"), "{err}");
    }

    #[test]
    fn a_heartbeat_slower_than_half_the_lease_is_refused_by_name() {
        let mut s = Settings::defaults();
        s.worker.heartbeat_ms = s.worker.lease_ms;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("worker.heartbeat_ms"), "{err}");
    }
}
