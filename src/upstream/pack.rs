//! Context packing: fitting a conversation into an upstream's prompt budget.
//!
//! Pinned, always sent: the leading system messages (the system prompt and the summary of older
//! history), the user's new message, and everything after it (this turn's tool rounds). Settings
//! validation guarantees the system prompt, a summary and the largest allowed message fit.
//! Droppable: the history between them, dropped from the oldest end, so what is sent is always a
//! contiguous recent part of the conversation. A kept part that would start with an assistant
//! message loses it too (Anthropic requires the first message to be the user's).

use super::tokens::{Counter, REPLY_OVERHEAD};
use crate::model::{ChatMessage, ModelError, Role, ToolSpec};

/// A conversation cut to fit.
#[derive(Debug)]
pub struct Packed {
    pub messages: Vec<ChatMessage>,
    /// Older messages left out.
    pub dropped: usize,
    /// Prompt tokens of what is sent (exact for a real tokenizer, an upper bound otherwise, and
    /// an upper bound when packing took the by-bytes fast path).
    pub tokens: u64,
}

/// Packs `messages` (with `tools` declared) into `budget` tokens.
pub fn pack(
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    counter: &Counter,
    budget: u64,
) -> Result<Packed, ModelError> {
    let head = messages.iter().take_while(|m| m.role == Role::System).count();
    let tail = messages.iter().rposition(|m| m.role == Role::User).filter(|&i| i >= head).unwrap_or(messages.len());
    let fixed: u64 = messages[..head].iter().chain(&messages[tail..]).map(|m| counter.count_message(m)).sum::<u64>()
        + counter.count_tools(tools)
        + REPLY_OVERHEAD;
    if fixed > budget {
        return Err(ModelError::ContextOverflow { needed: fixed, budget });
    }
    let middle = &messages[head..tail];
    // Fast path: when everything fits even by the byte bound, nothing needs counting.
    let bound: u64 = middle.iter().map(|m| counter.message_upper_bound(m)).sum();
    if fixed + bound <= budget {
        return Ok(Packed { messages: messages.to_vec(), dropped: 0, tokens: fixed + bound });
    }
    let mut used = fixed;
    let mut keep_from = middle.len();
    for (i, m) in middle.iter().enumerate().rev() {
        let t = counter.count_message(m);
        if used + t > budget {
            break;
        }
        used += t;
        keep_from = i;
    }
    while keep_from < middle.len() && middle[keep_from].role != Role::User {
        used -= counter.count_message(&middle[keep_from]);
        keep_from += 1;
    }
    let mut out = Vec::with_capacity(head + middle.len() - keep_from + messages.len() - tail);
    out.extend_from_slice(&messages[..head]);
    out.extend_from_slice(&middle[keep_from..]);
    out.extend_from_slice(&messages[tail..]);
    Ok(Packed { messages: out, dropped: keep_from, tokens: used })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(turns: usize, words: usize) -> Vec<ChatMessage> {
        let mut m = vec![ChatMessage::new(Role::System, "be brief")];
        for i in 0..turns {
            m.push(ChatMessage::new(Role::User, format!("question {i} {}", "word ".repeat(words))));
            m.push(ChatMessage::new(Role::Assistant, format!("answer {i} {}", "word ".repeat(words))));
        }
        m.push(ChatMessage::new(Role::User, "the latest question"));
        m
    }

    #[test]
    fn everything_fits_when_the_budget_allows() {
        let c = Counter::Approx { bytes_per_token: 3.0 };
        let p = pack(&conv(3, 5), &[], &c, 10_000).unwrap();
        assert_eq!((p.messages.len(), p.dropped), (8, 0));
    }

    #[test]
    fn the_oldest_history_is_dropped_first_and_the_pinned_part_stays() {
        let c = Counter::Approx { bytes_per_token: 3.0 };
        let all = conv(50, 20);
        let p = pack(&all, &[], &c, 1_000).unwrap();
        assert!(p.dropped > 0);
        assert_eq!(p.messages[0].text, "be brief");
        assert_eq!(p.messages.last().unwrap().text, "the latest question");
        assert_eq!(p.messages[1].role, Role::User, "the kept history starts with the user");
        // What is kept is the newest contiguous part.
        let kept = &p.messages[1..p.messages.len() - 1];
        assert_eq!(kept, &all[all.len() - 1 - kept.len()..all.len() - 1]);
        let total: u64 = p.messages.iter().map(|m| c.count_message(m)).sum::<u64>() + REPLY_OVERHEAD;
        assert!(total <= 1_000, "{total}");
    }

    #[test]
    fn a_pinned_part_over_the_budget_is_an_explicit_error() {
        let c = Counter::Approx { bytes_per_token: 3.0 };
        let m = vec![ChatMessage::new(Role::User, "x".repeat(3000))];
        assert!(matches!(pack(&m, &[], &c, 100), Err(ModelError::ContextOverflow { .. })));
    }
}
