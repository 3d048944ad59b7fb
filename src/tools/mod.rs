//! Tools the model may call: declared in config, run by the worker on the turn's behalf.
//!
//! A call never blocks the stream: the worker polls it alongside heartbeats and the stop signal,
//! and every call ends with one of `done`, `failed` or `timed_out`, each with a message the model
//! reads (a tool past its limit is told so, never left silent). [`ToolBox::run`] honours the
//! turn's cancellation token and its own time limit; dropping its future aborts the call (an HTTP
//! tool's request is closed).
//!
//! - [`builtin`]: the clock and the calculator;
//! - [`http`]: HTTP tools (POST a JSON-schema'd argument object, with time and size limits);
//! - [`settings`]: the `tools` section of the settings.

pub mod builtin;
pub mod http;
pub mod settings;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::model::{ToolCall, ToolSpec};
use settings::{ToolKind, ToolsSettings};

/// How a call ended (or that it runs), as sent in `tool_status` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolState {
    Running,
    Done,
    Failed,
    TimedOut,
}

impl ToolState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Done, Self::Failed, Self::TimedOut].into_iter().find(|t| t.as_str() == s)
    }
}

/// The end of a call: its state and what the model is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    pub state: ToolState,
    pub content: String,
}

impl ToolOutcome {
    fn done(content: String) -> Self {
        Self { state: ToolState::Done, content }
    }

    fn failed(content: impl Into<String>) -> Self {
        Self { state: ToolState::Failed, content: content.into() }
    }
}

enum Kind {
    Clock,
    Calculator,
    Http(Box<http::HttpTool>),
}

struct Tool {
    spec: ToolSpec,
    kind: Kind,
    timeout: Duration,
    rerun: bool,
}

/// The declared tools of a worker.
pub struct ToolBox {
    tools: BTreeMap<String, Tool>,
    max_result_bytes: usize,
    max_rounds: u32,
}

impl ToolBox {
    /// Builds the tools of validated settings.
    pub fn new(s: &ToolsSettings) -> Self {
        let client = reqwest::Client::builder().build().unwrap_or_default();
        let tools = s
            .declared
            .iter()
            .map(|(name, d)| {
                let (kind, description, parameters) = match d.kind {
                    ToolKind::Clock => (Kind::Clock, builtin::CLOCK_DESCRIPTION, builtin::clock_schema()),
                    ToolKind::Calculator => {
                        (Kind::Calculator, builtin::CALCULATOR_DESCRIPTION, builtin::calculator_schema())
                    }
                    ToolKind::Http => {
                        let t = http::HttpTool::new(d, client.clone());
                        let schema = t.schema().clone();
                        (Kind::Http(Box::new(t)), "", schema)
                    }
                };
                let description =
                    if d.description.is_empty() { description.to_string() } else { d.description.clone() };
                let spec = ToolSpec { name: name.clone(), description, parameters };
                let timeout = Duration::from_millis(d.timeout_ms.unwrap_or(s.timeout_ms));
                let rerun = d.rerun_after_takeover.unwrap_or(d.kind != ToolKind::Http);
                (name.clone(), Tool { spec, kind, timeout, rerun })
            })
            .collect();
        Self { tools, max_result_bytes: s.max_result_bytes, max_rounds: s.max_rounds }
    }

    /// What the model is told it may call.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec.clone()).collect()
    }

    /// Rounds of tool calls a turn may have.
    pub fn max_rounds(&self) -> u32 {
        self.max_rounds
    }

    /// Whether a call found running by an attempt that took the turn over is run again.
    pub fn rerun_after_takeover(&self, name: &str) -> bool {
        self.tools.get(name).is_some_and(|t| t.rerun)
    }

    /// Runs a call to its end: within the tool's time limit, stopping early when `cancel` fires.
    pub async fn run(&self, call: &ToolCall, cancel: &CancellationToken) -> ToolOutcome {
        let started = Instant::now();
        let outcome = self.run_inner(call, cancel).await;
        let label = if self.tools.contains_key(&call.name) { call.name.clone() } else { "unknown".into() };
        metrics::counter!(m::TOOL_CALLS, "tool" => label.clone(), "state" => outcome.state.as_str()).increment(1);
        metrics::histogram!(m::TOOL_SECONDS, "tool" => label).record(started.elapsed().as_secs_f64());
        ToolOutcome { content: truncate(outcome.content, self.max_result_bytes), ..outcome }
    }

    async fn run_inner(&self, call: &ToolCall, cancel: &CancellationToken) -> ToolOutcome {
        let Some(tool) = self.tools.get(&call.name) else {
            return ToolOutcome::failed(format!("there is no tool named `{}`", call.name));
        };
        let args: Value =
            match serde_json::from_str(if call.arguments.trim().is_empty() { "{}" } else { &call.arguments }) {
                Ok(v @ Value::Object(_)) => v,
                _ => return ToolOutcome::failed("the arguments must be a JSON object"),
            };
        let work = async {
            match &tool.kind {
                Kind::Clock => builtin::clock(),
                Kind::Calculator => builtin::calculate(&args),
                Kind::Http(h) => h.call(&args).await,
            }
        };
        tokio::select! {
            out = tokio::time::timeout(tool.timeout, work) => out.unwrap_or_else(|_| ToolOutcome {
                state: ToolState::TimedOut,
                content: format!(
                    "the tool `{}` did not finish within {} ms and was stopped",
                    call.name,
                    tool.timeout.as_millis()
                ),
            }),
            _ = cancel.cancelled() => ToolOutcome::failed("the turn was stopped"),
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, saying so.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let note = " …[truncated]";
    let mut cut = max.saturating_sub(note.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(note);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolbox(toml: &str) -> ToolBox {
        let s: ToolsSettings = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        settings::validate(&s).unwrap();
        ToolBox::new(&s)
    }

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall { id: "c1".into(), name: name.into(), arguments: args.into() }
    }

    const TOML: &str = "max_rounds = 3\ntimeout_ms = 1000\nmax_result_bytes = 100\n\
        [declared.calc]\nkind = \"calculator\"\n[declared.clock]\nkind = \"clock\"\n";

    #[tokio::test]
    async fn the_calculator_evaluates_and_refuses_garbage_with_a_message() {
        let t = toolbox(TOML);
        let never = CancellationToken::new();
        let ok = t.run(&call("calc", r#"{"expression":"2 * (3 + 4)"}"#), &never).await;
        assert_eq!(ok, ToolOutcome::done("14".into()));
        let bad = t.run(&call("calc", r#"{"expression":"2 *"}"#), &never).await;
        assert_eq!(bad.state, ToolState::Failed);
        assert_eq!(t.run(&call("calc", "[1]"), &never).await.state, ToolState::Failed);
        assert_eq!(t.run(&call("nope", "{}"), &never).await.state, ToolState::Failed);
    }

    #[tokio::test]
    async fn the_clock_answers_and_the_specs_name_every_tool() {
        let t = toolbox(TOML);
        let out = t.run(&call("clock", ""), &CancellationToken::new()).await;
        assert_eq!(out.state, ToolState::Done);
        assert!(out.content.contains("utc"), "{}", out.content);
        let names: Vec<_> = t.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["calc", "clock"]);
        assert!(t.rerun_after_takeover("calc"));
    }

    #[test]
    fn long_results_are_cut_at_a_character_boundary() {
        let s = truncate("é".repeat(100), 50);
        assert!(s.len() <= 50 && s.ends_with("[truncated]"), "{s}");
    }
}
