//! Usage when the upstream reports none. llama.cpp's server and some other OpenAI-compatible
//! servers send no `usage` in streams, and a turn would be billed and counted against quotas as
//! 0 tokens. Such an answer's tokens are counted here with the upstream's own tokenizer
//! ([`Counter`]): the prompt as sent, the completion as streamed (text and tool calls). The
//! usage is then marked [`ModelUsage::estimated`], counted in
//! `chatfleet_upstream_usage_estimated_total`, and the worker records the source with the turn.

use std::sync::Arc;

use futures::StreamExt;

use super::tokens::{Counter, REPLY_OVERHEAD};
use crate::metrics as m;
use crate::model::{ModelEvent, ModelRequest, ModelStream, ModelUsage};

/// Tokens of `req` as an upstream receives it: every message with its overhead, the tool
/// declarations, and the reply's priming.
pub fn prompt_tokens(counter: &Counter, req: &ModelRequest) -> u64 {
    req.messages.iter().map(|msg| counter.count_message(msg)).sum::<u64>()
        + counter.count_tools(&req.tools)
        + REPLY_OVERHEAD
}

/// Passes `stream` through; a `Done` whose usage the upstream did not report (the decoder marks
/// it `estimated`, with zero counts) gets counts made from the prompt and the streamed output.
pub fn estimate_missing(name: &str, counter: Arc<Counter>, prompt: u64, stream: ModelStream) -> ModelStream {
    let name = name.to_string();
    let mut completion = 0u64;
    stream
        .map(move |item| {
            match &item {
                Ok(ModelEvent::Text(t)) => completion += counter.count_text(t),
                Ok(ModelEvent::ToolCall(c)) => {
                    completion += counter.count_text(&c.name) + counter.count_text(&c.arguments)
                }
                Ok(ModelEvent::Done(u)) if u.estimated => {
                    metrics::counter!(m::UPSTREAM_USAGE_ESTIMATED, "upstream" => name.clone()).increment(1);
                    let usage = ModelUsage { prompt_tokens: prompt, completion_tokens: completion, estimated: true };
                    return Ok(ModelEvent::Done(usage));
                }
                _ => {}
            }
            item
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatMessage, Role};

    fn counter() -> Arc<Counter> {
        Arc::new(Counter::Approx { bytes_per_token: 3.0 })
    }

    fn run(events: Vec<ModelEvent>) -> Vec<ModelEvent> {
        let s = futures::stream::iter(events.into_iter().map(Ok)).boxed();
        let out = estimate_missing("t", counter(), 7, s);
        futures::executor::block_on(out.map(|r| r.unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn a_missing_usage_is_counted_from_the_prompt_and_the_streamed_text() {
        let unreported = ModelUsage { estimated: true, ..Default::default() };
        let out =
            run(vec![ModelEvent::Text("abcdef".into()), ModelEvent::Text("ghi".into()), ModelEvent::Done(unreported)]);
        // 6 bytes = 2 tokens, 3 bytes = 1 token at 3 bytes per token.
        assert_eq!(out[2], ModelEvent::Done(ModelUsage { prompt_tokens: 7, completion_tokens: 3, estimated: true }));
    }

    #[test]
    fn a_reported_usage_passes_unchanged() {
        let reported = ModelUsage { prompt_tokens: 9, completion_tokens: 4, estimated: false };
        let out = run(vec![ModelEvent::Text("abcdef".into()), ModelEvent::Done(reported)]);
        assert_eq!(out[1], ModelEvent::Done(reported));
    }

    #[test]
    fn the_prompt_counts_every_message_with_its_overhead() {
        let c = Counter::Approx { bytes_per_token: 3.0 };
        let req = ModelRequest { messages: vec![ChatMessage::new(Role::User, "abc")], ..Default::default() };
        assert_eq!(prompt_tokens(&c, &req), 1 + super::super::tokens::MESSAGE_OVERHEAD + REPLY_OVERHEAD);
    }
}
