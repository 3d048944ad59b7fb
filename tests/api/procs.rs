//! Worker processes from the real binary, for tests that kill, stop and drain them.

use std::process::Stdio;
use std::time::Duration;

use chatfleet::settings::Settings;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::helpers::FRAME_TIMEOUT;

/// The environment that gives a child process these settings.
pub fn env_for(s: &Settings) -> Vec<(String, String)> {
    let w = &s.worker;
    let d = &s.model.demo;
    [
        ("REDIS__URL", s.redis.url.clone()),
        ("REDIS__KEY_PREFIX", s.redis.key_prefix.clone()),
        ("REDIS__PARTITIONS", s.redis.partitions.to_string()),
        ("REDIS__COMMAND_TIMEOUT_MS", s.redis.command_timeout_ms.to_string()),
        ("WORKER__LEASE_MS", w.lease_ms.to_string()),
        ("WORKER__HEARTBEAT_MS", w.heartbeat_ms.to_string()),
        ("WORKER__SWEEP_INTERVAL_MS", w.sweep_interval_ms.to_string()),
        ("WORKER__READ_BLOCK_MS", w.read_block_ms.to_string()),
        ("WORKER__COALESCE_MS", w.coalesce_ms.to_string()),
        ("WORKER__DRAIN_TIMEOUT_MS", w.drain_timeout_ms.to_string()),
        ("WORKER__MAX_ATTEMPTS", w.max_attempts.to_string()),
        ("WORKER__CONSUMER_GC_IDLE_MS", w.consumer_gc_idle_ms.to_string()),
        ("MODEL__DEMO__TTFT_MS", d.ttft_ms.to_string()),
        ("MODEL__DEMO__TOKENS_PER_SEC", d.tokens_per_sec.to_string()),
        ("MODEL__DEMO__MAX_TOKENS", d.max_tokens.to_string()),
        ("METRICS__LISTEN", "127.0.0.1:0".into()),
        ("TELEMETRY__FILTER", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("CHATFLEET__{k}"), v))
    .collect()
}

/// A `chatfleet worker` process. Killed when dropped.
pub struct WorkerProc {
    pub child: Child,
}

impl WorkerProc {
    pub fn spawn(s: &Settings) -> Self {
        Self::spawn_with(s, &[])
    }

    /// Starts a worker whose `/metrics` listens on a port of its own; returns it with the port.
    pub fn spawn_with_metrics(s: &Settings) -> (Self, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let w = Self::spawn_with(
            s,
            &[("CHATFLEET__METRICS__LISTEN", &listen), ("CHATFLEET__METRICS__QUEUE_INTERVAL_MS", "200")],
        );
        (w, port)
    }

    fn spawn_with(s: &Settings, extra: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_chatfleet"))
            .arg("worker")
            .envs(env_for(s))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker starts");
        Self { child }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal delivered");
    }

    /// Waits for the process to exit; panics if it does not within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait()).await.expect("the worker exits in time").unwrap()
    }
}

/// Waits until a worker of process `pid` has joined the consumer group (its first XREADGROUP).
pub async fn wait_joined(raw: &fred::clients::Client, stream: &str, pid: Pid) {
    use fred::interfaces::StreamsInterface;
    let prefix = format!("w-{pid}-");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let consumers: Vec<std::collections::HashMap<String, fred::types::Value>> =
            raw.xinfo_consumers(stream, "workers").await.unwrap_or_default();
        if consumers.iter().any(|c| c.get("name").and_then(|v| v.as_string()).is_some_and(|n| n.starts_with(&prefix))) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "worker {pid} never joined");
        // Polling a condition in Redis, with a deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
