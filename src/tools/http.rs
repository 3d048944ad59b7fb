//! HTTP tools: the model's argument object, checked against the declared JSON Schema, is POSTed
//! as JSON to the tool's URL, and the response body (text, at most `max_response_bytes`) is what
//! the model reads. The time limit is the caller's ([`super::ToolBox::run`]); dropping the future
//! closes the request.

use futures::StreamExt;
use serde_json::Value;

use super::settings::ToolDef;
use super::ToolOutcome;

/// One declared HTTP tool.
pub struct HttpTool {
    url: String,
    schema: Value,
    validator: Option<jsonschema::Validator>,
    max_request_bytes: usize,
    max_response_bytes: usize,
    client: reqwest::Client,
}

impl HttpTool {
    /// From validated settings (the schema parsed and compiled there already).
    pub fn new(d: &ToolDef, client: reqwest::Client) -> Self {
        let schema: Value =
            serde_json::from_str(&d.parameters).unwrap_or_else(|_| serde_json::json!({"type": "object"}));
        let validator = jsonschema::validator_for(&schema).ok();
        Self {
            url: d.url.clone(),
            schema,
            validator,
            max_request_bytes: d.max_request_bytes,
            max_response_bytes: d.max_response_bytes,
            client,
        }
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// POSTs `args` and reads the answer within the size limits.
    pub async fn call(&self, args: &Value) -> ToolOutcome {
        if let Some(v) = &self.validator {
            if let Err(e) = v.validate(args) {
                return ToolOutcome::failed(format!("the arguments do not match the tool's schema: {e}"));
            }
        }
        let body = args.to_string();
        if body.len() > self.max_request_bytes {
            return ToolOutcome::failed(format!("the arguments exceed {} bytes", self.max_request_bytes));
        }
        let resp = match self.client.post(&self.url).header("content-type", "application/json").body(body).send().await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "HTTP tool unreachable");
                return ToolOutcome::failed("the tool's service could not be reached");
            }
        };
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > self.max_response_bytes as u64) {
            return ToolOutcome::failed(format!("the tool's answer exceeds {} bytes", self.max_response_bytes));
        }
        let mut body = Vec::new();
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(c) if body.len() + c.len() <= self.max_response_bytes => body.extend_from_slice(&c),
                Ok(_) => {
                    return ToolOutcome::failed(format!("the tool's answer exceeds {} bytes", self.max_response_bytes))
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "HTTP tool answer broke off");
                    return ToolOutcome::failed("the tool's answer broke off");
                }
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            ToolOutcome::done(text)
        } else {
            ToolOutcome::failed(format!("the tool's service answered {}: {text}", status.as_u16()))
        }
    }
}
