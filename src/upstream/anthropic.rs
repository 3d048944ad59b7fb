//! Anthropic Messages streaming: `POST {base_url}/v1/messages` with `stream: true`.
//!
//! Events, each with `event:` and a JSON `data:` carrying the same `type`: `message_start`
//! (input token usage), `content_block_start` (a `text` or `tool_use` block, by `index`),
//! `content_block_delta` (`text_delta` text, `input_json_delta` pieces of a tool's input JSON),
//! `content_block_stop`, `message_delta` (`stop_reason`, output token usage), `message_stop`,
//! `ping` (keep-alive), and `error`. System prompts go in the top-level `system` field, roles must
//! alternate (consecutive messages of one role are merged into one with several blocks), and
//! tool results are `tool_result` blocks of a user message.

use std::collections::BTreeMap;

use eventsource_stream::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{error_detail, Decoder, Step};
use super::settings::UpstreamSettings;
use crate::model::{ModelEvent, ModelRequest, ModelUsage, Role, ToolCall};

/// The request body for `req` (already packed).
pub fn body(u: &UpstreamSettings, req: &ModelRequest) -> Value {
    let system: Vec<&str> =
        req.messages.iter().filter(|m| m.role == Role::System && !m.text.is_empty()).map(|m| m.text.as_str()).collect();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let (role, mut blocks) = match m.role {
            Role::User => {
                let mut blocks = text_block(&m.text);
                // Images and documents by URL: Anthropic fetches them itself.
                blocks.extend(m.attachments.iter().map(|a| {
                    let kind = if a.content_type == "application/pdf" { "document" } else { "image" };
                    json!({"type": kind, "source": {"type": "url", "url": a.url}})
                }));
                ("user", blocks)
            }
            Role::Tool => {
                ("user", vec![json!({"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text})])
            }
            _ => {
                let mut blocks = text_block(&m.text);
                for c in &m.tool_calls {
                    // The model wrote the arguments; a broken object is sent as empty rather
                    // than failing the whole request.
                    let input: Value =
                        serde_json::from_str(&c.arguments).ok().filter(Value::is_object).unwrap_or(json!({}));
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
                }
                ("assistant", blocks)
            }
        };
        match messages.last_mut() {
            Some((last, b)) if *last == role => b.append(&mut blocks),
            _ if !blocks.is_empty() => messages.push((role, blocks)),
            _ => {}
        }
    }
    let messages: Vec<Value> =
        messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    let mut body = json!({
        "model": u.model,
        "max_tokens": req.route.max_tokens.map_or(u.max_output_tokens, |m| m.min(u.max_output_tokens)),
        "stream": true,
        "messages": messages,
    });
    // Anthropic's temperature range is 0-1 (OpenAI's is 0-2).
    if let Some(t) = req.route.temperature {
        body["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body["tools"] = Value::Array(tools);
        if req.tools_exhausted {
            body["tool_choice"] = json!({"type": "none"});
        }
    }
    body
}

/// Anthropic refuses empty text blocks.
fn text_block(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Data {
    MessageStart {
        message: Message,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<OutUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct Message {
    usage: Option<InUsage>,
}

#[derive(Deserialize)]
struct InUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// `thinking_delta`, `signature_delta`, and whatever comes next: output, but not text.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct OutUsage {
    #[serde(default)]
    output_tokens: u64,
}

/// Assembles events into [`ModelEvent`]s.
#[derive(Default)]
pub struct AnthropicDecoder {
    /// Open tool_use blocks by index.
    tools: BTreeMap<usize, ToolCall>,
    usage: ModelUsage,
    stop_seen: bool,
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, ev: &Event) -> Result<Step, String> {
        if ev.data.trim().is_empty() {
            return Ok(Step::default());
        }
        let data: Data = serde_json::from_str(&ev.data)
            .map_err(|e| format!("unparsable {} event ({e}): {:.200}", ev.event, ev.data))?;
        let mut step = Step::default();
        match data {
            Data::MessageStart { message } => {
                if let Some(u) = message.usage {
                    self.usage.prompt_tokens = u.input_tokens
                        + u.cache_creation_input_tokens.unwrap_or(0)
                        + u.cache_read_input_tokens.unwrap_or(0);
                    self.usage.completion_tokens = u.output_tokens;
                }
            }
            Data::ContentBlockStart { index, content_block: Block::ToolUse { id, name } } => {
                self.tools.insert(index, ToolCall { id, name, arguments: String::new() });
                step.progress = true;
            }
            Data::ContentBlockStart { .. } => {}
            Data::ContentBlockDelta { index, delta } => {
                step.progress = true;
                match delta {
                    BlockDelta::TextDelta { text } if !text.is_empty() => step.out.push(ModelEvent::Text(text)),
                    BlockDelta::InputJsonDelta { partial_json } => {
                        if let Some(call) = self.tools.get_mut(&index) {
                            call.arguments.push_str(&partial_json);
                        }
                    }
                    _ => {}
                }
            }
            Data::ContentBlockStop { index } => {
                if let Some(mut call) = self.tools.remove(&index) {
                    if call.arguments.trim().is_empty() {
                        call.arguments = "{}".into();
                    }
                    step.out.push(ModelEvent::ToolCall(call));
                }
            }
            Data::MessageDelta { delta, usage } => {
                self.stop_seen |= delta.stop_reason.is_some();
                if let Some(u) = usage {
                    self.usage.completion_tokens = u.output_tokens;
                }
            }
            Data::MessageStop => {
                step.out.push(ModelEvent::Done(self.usage));
                step.done = true;
            }
            Data::Ping | Data::Unknown => {}
            Data::Error { error } => return Err(error_detail(&json!({ "error": error }).to_string())),
        }
        Ok(step)
    }

    fn end(&mut self) -> Option<Vec<ModelEvent>> {
        self.stop_seen.then(|| vec![ModelEvent::Done(self.usage)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChatMessage;

    fn feed(d: &mut AnthropicDecoder, event: &str, data: &str) -> Step {
        d.event(&Event { event: event.into(), data: data.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn a_tool_use_block_assembles_from_input_json_deltas() {
        let mut d = AnthropicDecoder::default();
        feed(
            &mut d,
            "message_start",
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}"#,
        );
        feed(
            &mut d,
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        );
        let t = feed(
            &mut d,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me"}}"#,
        );
        assert_eq!(t.out, vec![ModelEvent::Text("Let me".into())]);
        feed(&mut d, "content_block_stop", r#"{"type":"content_block_stop","index":0}"#);
        feed(
            &mut d,
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"calc","input":{}}}"#,
        );
        feed(
            &mut d,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"expr\": \"2*"}}"#,
        );
        feed(&mut d, "ping", r#"{"type": "ping"}"#);
        feed(
            &mut d,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"21\"}"}}"#,
        );
        let stop = feed(&mut d, "content_block_stop", r#"{"type":"content_block_stop","index":1}"#);
        assert_eq!(
            stop.out,
            vec![ModelEvent::ToolCall(ToolCall {
                id: "toolu_1".into(),
                name: "calc".into(),
                arguments: r#"{"expr": "2*21"}"#.into()
            })]
        );
        feed(
            &mut d,
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
        );
        let end = feed(&mut d, "message_stop", r#"{"type":"message_stop"}"#);
        assert!(end.done);
        assert_eq!(
            end.out,
            vec![ModelEvent::Done(ModelUsage { prompt_tokens: 12, completion_tokens: 30, estimated: false })]
        );
    }

    #[test]
    fn roles_alternate_and_tool_results_are_user_blocks() {
        let u: UpstreamSettings =
            serde_json::from_value(json!({"kind": "anthropic", "base_url": "http://x", "model": "claude"})).unwrap();
        let call = ToolCall { id: "toolu_1".into(), name: "clock".into(), arguments: "{}".into() };
        let mut assistant = ChatMessage::new(Role::Assistant, "");
        assistant.tool_calls.push(call.clone());
        let req = ModelRequest::chat(vec![
            ChatMessage::new(Role::System, "sys"),
            ChatMessage::new(Role::User, "a"),
            ChatMessage::new(Role::User, "b"),
            assistant,
            ChatMessage::tool_result(&call, "12:00"),
        ]);
        let b = body(&u, &req);
        assert_eq!(b["system"], "sys");
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0]["content"].as_array().unwrap().len(), 2, "two user messages merged");
        assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    }

    #[test]
    fn attachments_go_as_url_sources_after_the_text() {
        let u: UpstreamSettings =
            serde_json::from_value(json!({"kind": "anthropic", "base_url": "http://x", "model": "claude"})).unwrap();
        let att = |url: &str, ct: &str| crate::payload::Attachment {
            url: url.into(),
            content_type: ct.into(),
            size: 1,
            name: None,
        };
        let mut m = ChatMessage::new(Role::User, "compare");
        m.attachments = vec![att("https://m.test/a.png", "image/png"), att("https://m.test/b.pdf", "application/pdf")];
        let b = body(&u, &ModelRequest::chat(vec![m]));
        assert_eq!(
            b["messages"][0]["content"],
            json!([{"type": "text", "text": "compare"},
                {"type": "image", "source": {"type": "url", "url": "https://m.test/a.png"}},
                {"type": "document", "source": {"type": "url", "url": "https://m.test/b.pdf"}}])
        );
    }
}
