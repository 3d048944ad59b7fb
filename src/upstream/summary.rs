//! The conversation a turn sends, and summaries of older history.
//!
//! A turn's conversation is: the system prompt, the session's summary (when there is one), then
//! the history the summary does not cover. Once `context.summarize_after_turns` turns are neither
//! summarised nor among the `keep_recent_turns` newest, the worker, after the turn has ended,
//! spawns [`run`]: one model call off the streaming path that folds them into a new summary,
//! stored with `put_summary`. The next turn reads it at start (in `start_turn`'s reply) and never
//! waits for a summary being written.

use std::sync::Arc;
use std::time::Instant;

use super::settings::ContextSettings;
use crate::metrics as m;
use crate::model::{ChatMessage, Model, ModelRequest, Role};
use crate::payload::HistoryMessage;
use crate::settings_base::ms;
use crate::store::Store;

/// Used when `context.summary_instruction` is empty.
pub const DEFAULT_INSTRUCTION: &str =
    "You maintain a running summary of a conversation between a user and an assistant. \
Write a concise summary that keeps every fact, decision, name, number and open question a later answer may need. \
Fold the previous summary (if any) and the messages into one summary. Reply with the summary only.";

/// Prefix of the summary when it is handed to the model.
pub const SUMMARY_PREFIX: &str = "Summary of the earlier conversation:\n";

/// True when a history message is covered by the summary that reaches up to turn `upto`. Turn
/// ids are UUIDv7 in hex: they sort as strings in the order they were created.
fn covered(m: &HistoryMessage, upto: Option<&str>) -> bool {
    upto.is_some_and(|u| m.turn_id.as_str() <= u)
}

fn chat(m: &HistoryMessage) -> Option<ChatMessage> {
    match m.role.as_str() {
        "user" => {
            Some(ChatMessage { attachments: m.attachments.clone(), ..ChatMessage::new(Role::User, m.text.clone()) })
        }
        "assistant" if !m.text.is_empty() => Some(ChatMessage::new(Role::Assistant, m.text.clone())),
        _ => None,
    }
}

/// The conversation for a turn (system prompt, summary, uncovered history, oldest first).
pub fn conversation(
    ctx: &ContextSettings,
    history: &[HistoryMessage],
    summary: Option<&(String, String)>,
) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(history.len() + 2);
    if !ctx.system_prompt.is_empty() {
        out.push(ChatMessage::new(Role::System, ctx.system_prompt.clone()));
    }
    let upto = summary.map(|(u, _)| u.as_str());
    if let Some((_, text)) = summary {
        out.push(ChatMessage::new(Role::System, format!("{SUMMARY_PREFIX}{text}")));
    }
    out.extend(history.iter().filter(|m| !covered(m, upto)).filter_map(chat));
    out
}

/// Places a turn's client-supplied context (see [`crate::payload::TurnOpts::context`]) after the
/// conversation's leading system messages and before the session's history. Its system messages
/// thus join the pinned head, and its earlier turns are history that packing may drop from the
/// oldest end, as it drops stored history.
pub fn with_context(mut messages: Vec<ChatMessage>, context: &[crate::payload::ContextMessage]) -> Vec<ChatMessage> {
    if context.is_empty() {
        return messages;
    }
    let head = messages.iter().take_while(|m| m.role == Role::System).count();
    let extra = context.iter().filter_map(|c| {
        let role = match c.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return None,
        };
        let attachments = if role == Role::User { c.attachments.clone() } else { Vec::new() };
        Some(ChatMessage { attachments, ..ChatMessage::new(role, c.text.clone()) })
    });
    messages.splice(head..head, extra);
    messages
}

/// Older history due to be folded into the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// The last turn folded in: the new summary covers every turn up to it.
    pub upto: String,
    pub messages: Vec<HistoryMessage>,
}

/// What to summarise now, if anything.
pub fn due(ctx: &ContextSettings, history: &[HistoryMessage], upto: Option<&str>) -> Option<Fold> {
    if ctx.summarize_after_turns == 0 {
        return None;
    }
    let uncovered: Vec<&HistoryMessage> = history.iter().filter(|m| !covered(m, upto)).collect();
    let mut turns: Vec<&str> = uncovered.iter().map(|m| m.turn_id.as_str()).collect();
    turns.dedup();
    let keep = ctx.keep_recent_turns as usize;
    if turns.len() < keep + ctx.summarize_after_turns as usize {
        return None;
    }
    let last = turns[turns.len() - keep - 1].to_string();
    let messages = uncovered.into_iter().filter(|m| m.turn_id.as_str() <= last.as_str()).cloned().collect();
    Some(Fold { upto: last, messages })
}

/// The summary call's conversation: instruction, previous summary, the messages to fold.
pub fn request(ctx: &ContextSettings, previous: Option<&str>, fold: &Fold) -> ModelRequest {
    let instruction = if ctx.summary_instruction.is_empty() { DEFAULT_INSTRUCTION } else { &ctx.summary_instruction };
    let mut messages = vec![ChatMessage::new(Role::System, instruction)];
    if let Some(p) = previous {
        messages.push(ChatMessage::new(Role::System, format!("Previous summary:\n{p}")));
    }
    messages.extend(fold.messages.iter().filter_map(chat));
    messages.push(ChatMessage::new(Role::User, "Write the updated summary now."));
    ModelRequest::chat(messages)
}

/// Writes a new summary of `fold` (called in the background, after a turn ended).
pub async fn run(
    store: Store,
    model: Arc<dyn Model>,
    base: String,
    epoch: String,
    ctx: ContextSettings,
    previous: Option<String>,
    fold: Fold,
) {
    let started = Instant::now();
    // One summary call per session at a time: a turn that ends while one runs leaves it be (the
    // next turn's end tries again), so slow summaries never pile up.
    match store.try_summary_lock(&base, ctx.summary_timeout_ms + 1000).await {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!(m::SUMMARIES, "outcome" => "busy").increment(1);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the summary lock; skipping");
            return;
        }
    }
    let req = request(&ctx, previous.as_deref(), &fold);
    let outcome = match model.summarize(req, ms(ctx.summary_timeout_ms)).await {
        Ok(text) if !text.trim().is_empty() => {
            let mut text = text.trim().to_string();
            let mut cut = text.len().min(ctx.summary_max_bytes);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            match store.put_summary(&base, &epoch, &fold.upto, &text, &ctx.template_version).await {
                Ok(true) => "stored",
                Ok(false) => "stale",
                Err(e) => {
                    tracing::warn!(error = %e, "storing a summary failed");
                    "failed"
                }
            }
        }
        Ok(_) => "empty",
        Err(e) => {
            tracing::warn!(error = %e, "summary call failed; history is packed without it");
            "failed"
        }
    };
    let _ = store.release_summary_lock(&base).await;
    metrics::counter!(m::SUMMARIES, "outcome" => outcome).increment(1);
    metrics::histogram!(m::SUMMARY_SECONDS).record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(turns: usize) -> Vec<HistoryMessage> {
        (0..turns)
            .flat_map(|i| {
                let tid = format!("t{i:04}");
                [("user", format!("q{i}")), ("assistant", format!("a{i}"))].map(|(role, text)| HistoryMessage {
                    v: 1,
                    role: role.into(),
                    turn_id: tid.clone(),
                    text,
                    status: None,
                    attachments: Vec::new(),
                })
            })
            .collect()
    }

    #[test]
    fn a_summary_is_due_after_n_turns_beyond_the_recent_ones() {
        let ctx = ContextSettings { summarize_after_turns: 3, keep_recent_turns: 2, ..Default::default() };
        assert_eq!(due(&ctx, &hist(4), None), None);
        let f = due(&ctx, &hist(5), None).unwrap();
        assert_eq!(f.upto, "t0002");
        assert_eq!(f.messages.len(), 6);
        // Covered turns do not count again.
        assert_eq!(due(&ctx, &hist(7), Some("t0002")), None);
        assert_eq!(due(&ctx, &hist(8), Some("t0002")).unwrap().upto, "t0005");
    }

    #[test]
    fn client_context_goes_between_the_system_head_and_the_history() {
        use crate::payload::ContextMessage;
        let ctx = ContextSettings { system_prompt: "sys".into(), ..Default::default() };
        let c = conversation(&ctx, &hist(1)[..1], None);
        let cm =
            |role: &str, text: &str| ContextMessage { role: role.into(), text: text.into(), attachments: Vec::new() };
        let context = [cm("system", "be terse"), cm("user", "earlier q"), cm("assistant", "earlier a")];
        let out = with_context(c, &context);
        let got: Vec<(Role, &str)> = out.iter().map(|m| (m.role, m.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (Role::System, "sys"),
                (Role::System, "be terse"),
                (Role::User, "earlier q"),
                (Role::Assistant, "earlier a"),
                (Role::User, "q0")
            ]
        );
    }

    #[test]
    fn the_conversation_replaces_covered_history_by_the_summary() {
        let ctx = ContextSettings { system_prompt: "sys".into(), ..Default::default() };
        let summary = ("t0002".to_string(), "they talked".to_string());
        let c = conversation(&ctx, &hist(5), Some(&summary));
        assert_eq!(c[0].text, "sys");
        assert_eq!(c[1].text, format!("{SUMMARY_PREFIX}they talked"));
        assert_eq!(c[2].text, "q3");
        assert_eq!(c.len(), 6);
    }
}
