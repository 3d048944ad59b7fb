//! What the parent asks of one load child (sent as one JSON line on its stdin), and what the
//! child sends back on its stdout: progress lines while it runs, then one report.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::stats::{Hists, Series};

/// How a child's sessions start turns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Each session sends its next turn `think_ms` (± half, random) after the previous ended.
    Closed { think_ms: u64 },
    /// The child starts `per_sec` turns per second, each on a session that has none running.
    Paced { per_sec: f64 },
    /// Sessions say hello and hold their socket; no turns.
    Idle,
}

/// One load child's share of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub child: usize,
    /// Gateway addresses; session `i` starts on `targets[i % n]` and moves on after a drop.
    pub targets: Vec<SocketAddr>,
    /// Local addresses to connect from (each gives about 28k ephemeral ports per target).
    pub sources: Vec<IpAddr>,
    pub session_prefix: String,
    /// Index of this child's first session, and how many it runs.
    pub first: usize,
    pub count: usize,
    pub mode: Mode,
    /// Connections opened per second (bounded so the listen backlog never overflows).
    pub connect_per_sec: u64,
    /// After `go`, how long sessions start new turns (or idle sessions hold), ms.
    pub run_ms: u64,
    /// Then how long running turns get to end before they count as unfinished, ms.
    pub drain_ms: u64,
    /// At most this many turns in the whole child (0: no cap).
    pub max_turns: u64,
    /// The demo model's settings, to check every answer exactly.
    pub max_tokens: usize,
    pub tokens_per_sec: u64,
    /// Which latency the per-second series carries (`turn_started`, `first_delta`, `gap`, …).
    pub series_metric: String,
    /// Longest a turn may take before it counts as timed out, ms.
    pub turn_timeout_ms: u64,
}

/// A line a child prints on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildLine {
    /// All sessions have tried to connect; waiting for `go`.
    Ready { connected: u64, failed: u64 },
    /// Running totals, a few times a second.
    Progress(BTreeMap<String, u64>),
    /// Everything measured; the child exits after it.
    Report(Box<ChildReport>),
}

/// What a child measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildReport {
    pub counters: BTreeMap<String, u64>,
    pub hists: Hists,
    pub series: Series,
    /// Unix µs at which `reset` events arrived (capped), to time takeovers against kills.
    pub resets_unix_us: Vec<u64>,
}

/// A line the parent sends after the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentLine {
    /// Start the run; `t0_unix_ms` is the common origin of every series.
    Go { t0_unix_ms: u64 },
    /// Stop starting turns now (ends idle holds and soaks early).
    Stop,
}
