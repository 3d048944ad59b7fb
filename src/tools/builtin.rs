//! The built-in tools: a clock and a calculator. Both are pure and fast, so they run inline.

use serde_json::{json, Value};

use super::ToolOutcome;

pub const CLOCK_DESCRIPTION: &str = "The current date and time in UTC (RFC 3339) and as Unix seconds.";
pub const CALCULATOR_DESCRIPTION: &str =
    "Evaluates an arithmetic expression, e.g. \"(2 + 3) * 4 / 7\" or \"2^10\"; returns the value.";

pub fn clock_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

pub fn calculator_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "The expression to evaluate"}},
        "required": ["expression"]
    })
}

/// The current time.
pub fn clock() -> ToolOutcome {
    let now = time::OffsetDateTime::now_utc();
    let utc = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    ToolOutcome::done(json!({"utc": utc, "unix": now.unix_timestamp()}).to_string())
}

/// Evaluates `args.expression` with `evalexpr` (no variables, no side effects).
pub fn calculate(args: &Value) -> ToolOutcome {
    let Some(expr) = args.get("expression").and_then(Value::as_str) else {
        return ToolOutcome::failed("`expression` (a string) is required");
    };
    match evalexpr::eval(expr) {
        Ok(v) => ToolOutcome::done(v.to_string()),
        Err(e) => ToolOutcome::failed(format!("cannot evaluate `{expr}`: {e}")),
    }
}
