//! A turn's conversation across tool rounds, and the record keys of its tool calls.
//!
//! A round is one model request. When it ends with tool calls, the worker runs them, and the
//! next round's request carries the assistant message (its text and calls) and one result per
//! call. Records of calls are keyed by round, tool and canonical arguments, so an attempt that
//! takes the turn over, whose model makes the same calls in the same rounds, finds what ran.

use std::collections::HashMap;

use crate::model::{ChatMessage, ModelRequest, Role, ToolCall};
use crate::payload::{self, ToolRecord};
use crate::tools::ToolOutcome;

/// The conversation of a running turn.
pub(super) struct Conversation {
    pub request: ModelRequest,
    /// Tool rounds run so far.
    pub rounds: u32,
    round_text: String,
    calls: Vec<ToolCall>,
    /// Records written by earlier attempts, by record key.
    earlier: HashMap<String, ToolRecord>,
}

impl Conversation {
    pub fn new(request: ModelRequest, records: &[bytes::Bytes]) -> Self {
        let earlier = records
            .iter()
            .filter_map(|b| match payload::decode_tool_record(b) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable tool record");
                    None
                }
            })
            .map(|r| (key_of(r.round, &r.name, &r.args), r))
            .collect();
        Self { request, rounds: 0, round_text: String::new(), calls: Vec::new(), earlier }
    }

    pub fn push_text(&mut self, t: &str) {
        self.round_text.push_str(t);
    }

    pub fn push_call(&mut self, c: ToolCall) {
        self.calls.push(c);
    }

    /// The calls of the round that just ended.
    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    /// Forgets a failed round's output before it is retried.
    pub fn reset_round(&mut self) {
        self.round_text.clear();
        self.calls.clear();
    }

    /// The record key of call `i` of the current round.
    pub fn key(&self, i: usize) -> String {
        let c = &self.calls[i];
        key_of(self.rounds, &c.name, &c.arguments)
    }

    /// What an earlier attempt recorded for call `i` of the current round.
    pub fn earlier(&self, i: usize) -> Option<&ToolRecord> {
        self.earlier.get(&self.key(i))
    }

    /// A record of call `i` in `state` with `result`.
    pub fn record(&self, i: usize, state: &str, result: &str) -> Vec<u8> {
        let c = &self.calls[i];
        payload::encode_tool_record(&ToolRecord {
            v: payload::VERSION,
            round: self.rounds,
            name: c.name.clone(),
            args: c.arguments.clone(),
            state: state.into(),
            result: result.into(),
        })
    }

    /// Ends the round: the assistant message with its calls, then one result per call, go into
    /// the next request.
    pub fn close_round(&mut self, results: Vec<ToolOutcome>) {
        let calls = std::mem::take(&mut self.calls);
        let mut assistant = ChatMessage::new(Role::Assistant, std::mem::take(&mut self.round_text));
        assistant.tool_calls = calls.clone();
        self.request.messages.push(assistant);
        for (call, out) in calls.iter().zip(results) {
            self.request.messages.push(ChatMessage::tool_result(call, out.content));
        }
        self.rounds += 1;
    }
}

/// `<round>\n<tool>\n<arguments as canonical JSON>` (serde_json orders object keys).
fn key_of(round: u32, name: &str, args: &str) -> String {
    let canonical = serde_json::from_str::<serde_json::Value>(args)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| args.trim().to_string());
    format!("{round}\n{name}\n{canonical}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_ignore_argument_formatting_but_not_the_round() {
        assert_eq!(key_of(0, "calc", r#"{"b":1, "a":2}"#), key_of(0, "calc", r#"{"a":2,"b":1}"#));
        assert_ne!(key_of(0, "calc", "{}"), key_of(1, "calc", "{}"));
    }

    #[test]
    fn closing_a_round_appends_the_calls_and_their_results() {
        let mut c = Conversation::new(ModelRequest::default(), &[]);
        c.push_text("checking");
        c.push_call(ToolCall { id: "a".into(), name: "clock".into(), arguments: "{}".into() });
        c.close_round(vec![ToolOutcome { state: crate::tools::ToolState::Done, content: "noon".into() }]);
        let m = &c.request.messages;
        assert_eq!((m[0].role, m[0].text.as_str(), m[0].tool_calls.len()), (Role::Assistant, "checking", 1));
        assert_eq!((m[1].role, m[1].tool_call_id.as_deref(), m[1].text.as_str()), (Role::Tool, Some("a"), "noon"));
        assert_eq!(c.rounds, 1);
    }
}
