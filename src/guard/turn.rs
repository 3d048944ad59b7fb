//! One turn's guard: its redaction filter, and its moderation checks (the user's message before
//! the model is called, and the answer in phrases while it streams).
//!
//! Answer phrases are checked off the streaming path: text is written as soon as the filter
//! releases it, and a phrase (released text up to a sentence end, or
//! `guard.moderation_phrase_chars` characters) is sent for checking at once, with at most
//! `guard.moderation_max_in_flight` checks running per turn (later text waits in the next,
//! longer, phrase). A flagged phrase cuts the turn; the worker keeps what it had already
//! generated (docs/guardrails.md, "What a cut keeps"). Before `done`, the worker waits for the
//! last checks, so no phrase of a finished answer goes unchecked.
//!
//! A check that failed while `guard.moderation_fail_open` let the turn go on is remembered
//! ([`TurnGuard::unchecked`]), so the turn's audit can say that part of it went unchecked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::moderation::{ModerationError, Moderator, Verdict};
use super::redact::Redactor;
use super::{FLAGGED_CODE, UNAVAILABLE_CODE};

/// Why moderation ends a turn: an `error` event's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub code: &'static str,
    pub message: String,
}

/// A tenant's moderation settings, with the shared client.
#[derive(Debug, Clone)]
pub(super) struct ModerationPolicy {
    pub moderator: Arc<Moderator>,
    pub model: String,
    pub fail_open: bool,
    pub phrase_chars: usize,
    pub max_in_flight: usize,
}

impl ModerationPolicy {
    /// The cut a check's outcome calls for, if any. Logs the outcome (never the text); a failed
    /// check let through sets `unchecked`.
    fn judge(&self, r: Result<Verdict, ModerationError>, stage: &'static str, unchecked: &AtomicBool) -> Option<Cut> {
        match r {
            Ok(Verdict::Clear) => None,
            Ok(Verdict::Flagged(categories)) => {
                tracing::info!(stage, ?categories, "moderation flagged the turn's text");
                let what = if stage == "input" { "the message was flagged" } else { "the answer was cut" };
                let message = if categories.is_empty() {
                    format!("{what} by moderation")
                } else {
                    format!("{what} by moderation ({})", categories.join(", "))
                };
                Some(Cut { code: FLAGGED_CODE, message })
            }
            Err(e) if self.fail_open => {
                tracing::warn!(stage, error = %e, "moderation unavailable; going on unchecked (guard.moderation_fail_open)");
                unchecked.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::warn!(stage, error = %e, "moderation unavailable; ending the turn (guard.moderation_fail_open = false)");
                Some(Cut { code: UNAVAILABLE_CODE, message: "moderation could not check this turn".into() })
            }
        }
    }
}

type Check = BoxFuture<'static, Result<Verdict, ModerationError>>;

/// The guard of one running turn.
pub struct TurnGuard {
    redactor: Option<Redactor>,
    moderation: Option<ModerationPolicy>,
    /// Released text not yet sent for checking.
    phrase: String,
    /// The round ended: the rest of `phrase` goes out as soon as a check slot is free.
    ended: bool,
    in_flight: FuturesUnordered<Check>,
    /// A check failed and the turn went on (fail open). Shared with the screening future.
    unchecked: Arc<AtomicBool>,
}

impl TurnGuard {
    pub(super) fn new(redactor: Option<Redactor>, moderation: Option<ModerationPolicy>) -> Self {
        let (phrase, in_flight, unchecked) = (String::new(), FuturesUnordered::new(), Arc::default());
        Self { redactor, moderation, phrase, ended: false, in_flight, unchecked }
    }

    /// Whether a moderation check failed and the turn went on without it (fail open): its
    /// audit gets [`super::UNCHECKED_MARK`].
    pub fn unchecked(&self) -> bool {
        self.unchecked.load(Ordering::Relaxed)
    }

    /// A guard that lets everything through (guards off).
    pub fn off() -> Self {
        Self::new(None, None)
    }

    /// Whether this turn's text goes through the redaction filter.
    pub fn redacts(&self) -> bool {
        self.redactor.is_some()
    }

    /// The check of the user's message before the model is called, when moderation is on (and
    /// there is a message).
    pub fn screen(&self, message: &str) -> Option<BoxFuture<'static, Option<Cut>>> {
        let p = self.moderation.clone().filter(|_| !message.trim().is_empty())?;
        let (message, unchecked) = (message.to_string(), self.unchecked.clone());
        Some(Box::pin(async move {
            let r = p.moderator.check(&message, &p.model, "input").await;
            p.judge(r, "input", &unchecked)
        }))
    }

    /// Model text in; the text to write out (possibly less, possibly with markers).
    pub fn text(&mut self, raw: &str) -> String {
        let mut out = String::new();
        match &mut self.redactor {
            Some(r) => r.push(raw, &mut out),
            None => out.push_str(raw),
        }
        self.ended = false;
        self.add_phrase(&out);
        out
    }

    /// The round (or the turn) ended: decides and returns everything held, and sends the last
    /// phrase for checking.
    pub fn end_round(&mut self) -> String {
        let mut out = String::new();
        if let Some(r) = &mut self.redactor {
            r.finish(&mut out);
        }
        self.ended = true;
        self.add_phrase(&out);
        out
    }

    /// Answer checks are running (the turn must not end `done` before they answer).
    pub fn checks_pending(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Waits for the running checks: the first cut, or `None` once all passed.
    pub async fn next_cut(&mut self) -> Option<Cut> {
        while let Some(r) = self.in_flight.next().await {
            if let Some(cut) = self.moderation.as_ref().and_then(|p| p.judge(r, "output", &self.unchecked)) {
                return Some(cut);
            }
            self.submit();
        }
        None
    }

    fn add_phrase(&mut self, text: &str) {
        if self.moderation.is_some() {
            self.phrase.push_str(text);
            self.submit();
        }
    }

    /// Sends ready phrases for checking while slots are free.
    fn submit(&mut self) {
        let Some(p) = &self.moderation else { return };
        while self.in_flight.len() < p.max_in_flight && !self.phrase.is_empty() {
            let long = self.phrase.chars().nth(p.phrase_chars.saturating_sub(1)).is_some();
            let cut = if self.ended || long {
                self.phrase.len()
            } else {
                match self.phrase.rfind(['.', '!', '?', '\n']) {
                    Some(i) => i + 1,
                    None => return,
                }
            };
            let rest = self.phrase.split_off(cut);
            let phrase = std::mem::replace(&mut self.phrase, rest);
            if phrase.trim().is_empty() {
                continue;
            }
            let (m, model) = (p.moderator.clone(), p.model.clone());
            self.in_flight.push(Box::pin(async move { m.check(&phrase, &model, "output").await }));
        }
    }
}
