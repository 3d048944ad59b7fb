//! OpenAI Chat Completions streaming: `POST {base_url}/chat/completions` with `stream: true`.
//!
//! The body is SSE: `data: {chunk}` events, then `data: [DONE]`. A chunk carries
//! `choices[0].delta.content` (text), `choices[0].delta.tool_calls` (fragments of tool calls, keyed
//! by `index`: the id and name come first, the `arguments` JSON in pieces), `finish_reason`, and,
//! with `stream_options.include_usage`, a last chunk with empty `choices` and the `usage`. An error
//! mid-stream arrives as a chunk with an `error` object. Servers that speak this format: OpenAI,
//! vLLM, llama.cpp's server, Ollama, TGI, LiteLLM and most hosted providers.

use std::collections::BTreeMap;

use eventsource_stream::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{error_detail, Decoder, Step};
use super::settings::UpstreamSettings;
use crate::model::{ChatMessage, ModelEvent, ModelRequest, ModelUsage, Role, ToolCall};

/// The request body for `req` (already packed).
pub fn body(u: &UpstreamSettings, req: &ModelRequest) -> Value {
    let messages: Vec<Value> = req.messages.iter().map(message).collect();
    let mut body = json!({
        "model": u.model,
        "stream": true,
        "max_tokens": req.route.max_tokens.map_or(u.max_output_tokens, |m| m.min(u.max_output_tokens)),
        "messages": messages,
    });
    if let Some(t) = req.route.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(user) = &req.route.user {
        body["user"] = json!(user);
    }
    if u.include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let function = json!({"name": t.name, "description": t.description, "parameters": t.parameters});
                json!({"type": "function", "function": function})
            })
            .collect();
        body["tools"] = Value::Array(tools);
        if req.tools_exhausted {
            body["tool_choice"] = json!("none");
        }
    }
    body
}

fn message(m: &ChatMessage) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.text}),
        Role::User if m.attachments.is_empty() => json!({"role": "user", "content": m.text}),
        // Content parts: the text, then each image by URL (the upstream fetches it).
        Role::User => {
            let mut parts = vec![json!({"type": "text", "text": m.text})];
            parts.extend(m.attachments.iter().map(|a| json!({"type": "image_url", "image_url": {"url": a.url}})));
            json!({"role": "user", "content": parts})
        }
        Role::Tool => json!({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}),
        Role::Assistant if m.tool_calls.is_empty() => json!({"role": "assistant", "content": m.text}),
        Role::Assistant => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(
                    |c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}),
                )
                .collect();
            let content = if m.text.is_empty() { Value::Null } else { Value::String(m.text.clone()) };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    /// Reasoning models served by vLLM and others stream their thinking here: not answer text,
    /// but proof the model is working, so it counts against no timeout.
    reasoning_content: Option<String>,
    tool_calls: Option<Vec<CallDelta>>,
}

#[derive(Deserialize)]
struct CallDelta {
    index: Option<usize>,
    id: Option<String>,
    function: Option<FnDelta>,
}

#[derive(Deserialize)]
struct FnDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Assembles chunks into [`ModelEvent`]s.
#[derive(Default)]
pub struct OpenAiDecoder {
    calls: BTreeMap<usize, ToolCall>,
    /// `None` until a chunk carries `usage`; servers such as llama.cpp's never send one.
    usage: Option<ModelUsage>,
    finish_seen: bool,
}

impl OpenAiDecoder {
    fn closing(&mut self) -> Vec<ModelEvent> {
        let mut out: Vec<ModelEvent> =
            std::mem::take(&mut self.calls).into_values().map(ModelEvent::ToolCall).collect();
        // No usage seen: marked for `upstream::usage` to count.
        out.push(ModelEvent::Done(self.usage.unwrap_or(ModelUsage { estimated: true, ..Default::default() })));
        out
    }
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, ev: &Event) -> Result<Step, String> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(Step { out: self.closing(), progress: false, done: true });
        }
        if data.is_empty() {
            return Ok(Step::default());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| format!("unparsable chunk ({e}): {data:.200}"))?;
        if let Some(e) = chunk.error {
            return Err(error_detail(&json!({ "error": e }).to_string()));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(ModelUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                estimated: false,
            });
        }
        let mut step = Step::default();
        // n = 1 is all we ask for: only the first choice is read.
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(d) = choice.delta {
                if let Some(text) = d.content.filter(|t| !t.is_empty()) {
                    step.out.push(ModelEvent::Text(text));
                    step.progress = true;
                }
                step.progress |= d.reasoning_content.is_some_and(|t| !t.is_empty());
                for (pos, c) in d.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let index = c.index.unwrap_or(pos);
                    let call = self.calls.entry(index).or_insert_with(|| ToolCall {
                        id: format!("call_{index}"),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    if let Some(id) = c.id.filter(|i| !i.is_empty()) {
                        call.id = id;
                    }
                    if let Some(f) = c.function {
                        if let Some(n) = f.name {
                            call.name.push_str(&n);
                        }
                        if let Some(a) = f.arguments {
                            call.arguments.push_str(&a);
                        }
                    }
                    step.progress = true;
                }
            }
            self.finish_seen |= choice.finish_reason.is_some();
        }
        Ok(step)
    }

    fn end(&mut self) -> Option<Vec<ModelEvent>> {
        self.finish_seen.then(|| self.closing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut OpenAiDecoder, data: &str) -> Step {
        d.event(&Event { data: data.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn tool_call_fragments_assemble_by_index() {
        let mut d = OpenAiDecoder::default();
        feed(
            &mut d,
            r#"{"choices":[{"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"calc","arguments":""}}]}}]}"#,
        );
        feed(&mut d, r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"expr"}}]}}]}"#);
        feed(
            &mut d,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"clock","arguments":"{}"}}]}}]}"#,
        );
        feed(&mut d, r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\":\"1+1\"}"}}]}}]}"#);
        feed(&mut d, r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#);
        feed(&mut d, r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#);
        let end = feed(&mut d, "[DONE]");
        assert!(end.done);
        assert_eq!(
            end.out,
            vec![
                ModelEvent::ToolCall(ToolCall {
                    id: "call_a".into(),
                    name: "calc".into(),
                    arguments: r#"{"expr":"1+1"}"#.into()
                }),
                ModelEvent::ToolCall(ToolCall { id: "call_b".into(), name: "clock".into(), arguments: "{}".into() }),
                ModelEvent::Done(ModelUsage { prompt_tokens: 9, completion_tokens: 4, estimated: false }),
            ]
        );
    }

    #[test]
    fn an_error_chunk_is_an_error_and_role_chunks_are_not_progress() {
        let mut d = OpenAiDecoder::default();
        assert!(!feed(&mut d, r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#).progress);
        let err = d.event(&Event { data: r#"{"error":{"message":"overloaded"}}"#.into(), ..Default::default() });
        assert_eq!(err.unwrap_err(), "overloaded");
    }
}
