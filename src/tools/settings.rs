//! Settings of the tools the model may call (`[tools]`, `[tools.declared.<name>]`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::settings_base::SettingsError;

/// Which implementation a declared tool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Built in: the current UTC time.
    Clock,
    /// Built in: evaluates an arithmetic expression (`evalexpr`).
    Calculator,
    /// POSTs the model's argument object as JSON to `url` and gives the model the response body.
    Http,
}

/// Per-tool defaults (a tool table may omit them).
pub mod defaults {
    /// `max_request_bytes`: largest argument object sent to an HTTP tool.
    pub const MAX_REQUEST_BYTES: usize = 16_384;
    /// `max_response_bytes`: largest HTTP tool response read; a larger one fails the call.
    pub const MAX_RESPONSE_BYTES: usize = 65_536;
}

fn d_req() -> usize {
    defaults::MAX_REQUEST_BYTES
}
fn d_resp() -> usize {
    defaults::MAX_RESPONSE_BYTES
}

/// One declared tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub kind: ToolKind,
    /// What the model is told the tool does (built-ins have their own when empty).
    #[serde(default)]
    pub description: String,
    /// HTTP tools: the URL the argument object is POSTed to.
    #[serde(default)]
    pub url: String,
    /// HTTP tools: JSON Schema of the argument object, as JSON text. Arguments that do not
    /// validate are refused before any request is made (the model is told why).
    #[serde(default)]
    pub parameters: String,
    /// Longest the call may run; `tools.timeout_ms` when unset.
    pub timeout_ms: Option<u64>,
    #[serde(default = "d_req")]
    pub max_request_bytes: usize,
    #[serde(default = "d_resp")]
    pub max_response_bytes: usize,
    /// Run the call again when another worker takes the turn over and the call was still running
    /// (its outcome unknown). Defaults to true for built-ins (pure) and false for HTTP tools
    /// (which may have effects): the model is then told the outcome is unknown.
    pub rerun_after_takeover: Option<bool>,
}

/// The tools section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSettings {
    /// Rounds of tool calls in one turn; then the model must answer without tools.
    pub max_rounds: u32,
    /// Default time limit of one call.
    pub timeout_ms: u64,
    /// Largest tool result handed back to the model (cut at a character boundary).
    pub max_result_bytes: usize,
    /// Tools the model may call, by name (`[tools.declared.<name>]`).
    #[serde(default)]
    pub declared: BTreeMap<String, ToolDef>,
}

impl Default for ToolsSettings {
    fn default() -> Self {
        Self { max_rounds: 4, timeout_ms: 10_000, max_result_bytes: 16_384, declared: BTreeMap::new() }
    }
}

/// Checks the tools section (called by [`crate::settings::Settings::validate`]).
pub fn validate(t: &ToolsSettings) -> Result<(), SettingsError> {
    let invalid = |key, reason: String| Err(SettingsError::Invalid { key, reason });
    if !(1..=32).contains(&t.max_rounds) {
        return invalid("tools.max_rounds", "must be 1..=32".into());
    }
    if t.timeout_ms == 0 || t.max_result_bytes < 64 {
        return invalid("tools.timeout_ms", "timeout_ms must be > 0 and max_result_bytes >= 64".into());
    }
    for (name, d) in &t.declared {
        // OpenAI's rule for function names, which Anthropic's also satisfies.
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return invalid("tools.declared", format!("tool `{name}`: names are 1-64 characters of [A-Za-z0-9_-]"));
        }
        if d.timeout_ms == Some(0) || d.max_request_bytes == 0 || d.max_response_bytes == 0 {
            return invalid("tools.declared.*.timeout_ms", format!("tool `{name}`: limits must be > 0"));
        }
        if d.kind == ToolKind::Http {
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return invalid("tools.declared.*.url", format!("tool `{name}`: must start with http:// or https://"));
            }
            let schema: serde_json::Value =
                serde_json::from_str(&d.parameters).map_err(|e| SettingsError::Invalid {
                    key: "tools.declared.*.parameters",
                    reason: format!("tool `{name}`: not JSON: {e}"),
                })?;
            if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                return invalid(
                    "tools.declared.*.parameters",
                    format!("tool `{name}`: the schema must have \"type\": \"object\""),
                );
            }
            if let Err(e) = jsonschema::validator_for(&schema) {
                return invalid("tools.declared.*.parameters", format!("tool `{name}`: not a valid JSON Schema: {e}"));
            }
        }
    }
    Ok(())
}
