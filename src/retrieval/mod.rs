//! Retrieval: knowledge collections per tenant, searched at packing time.
//!
//! - [`settings`]: `[retrieval]` limits and `[[retrieval.rules]]` (which sessions use which
//!   collection);
//! - [`chunk`]: documents cut into chunks of at most N tokens, with overlap;
//! - [`store`]: the PostgreSQL tables (the archive's database) and full-text search;
//! - [`pack`]: the delimited reference block that goes into the prompt, and its citations.
//!
//! The ingest API is `gateway::knowledge`. On a turn, the worker asks [`Retriever::retrieve`]
//! before the model call; the search has its own timeout, and when it fails or times out the
//! answer goes on without reference material, with the outcome in the turn's audit.
//! Retrieval exists only with an archive (`archive.url`).

pub mod chunk;
pub mod pack;
mod settings;
pub mod store;

use std::time::Duration;

use tokio::time::Instant;

pub use settings::{RetrievalRule, RetrievalSettings};

use crate::archive::{Archive, ArchiveError};
use crate::metrics as m;
use pack::Reference;
use store::Knowledge;

/// What a turn's search gave. [`Self::label`] is its metric label and audit mark.
#[derive(Debug)]
pub enum Outcome {
    /// Chunks went into the prompt.
    Packed(Reference),
    /// Nothing matched (or nothing fit the budget).
    Empty,
    /// The search took longer than `retrieval.timeout_ms`.
    Timeout,
    /// PostgreSQL failed (down, refused, error).
    Failed,
}

/// Every [`Outcome::label`], for the metrics registered at 0.
pub const OUTCOMES: [&str; 4] = ["packed", "empty", "timeout", "failed"];

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Packed(_) => "packed",
            Self::Empty => "empty",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
        }
    }
}

/// Searches collections for turns. Cheap to clone.
#[derive(Clone)]
pub struct Retriever {
    knowledge: Knowledge,
    settings: RetrievalSettings,
    bytes_per_token: f64,
}

impl Retriever {
    /// A retriever on its own pool of the archive's database (connecting on first use); `None`
    /// when there is no archive or no rule.
    pub fn new(s: &crate::settings::Settings) -> Result<Option<Self>, ArchiveError> {
        if !s.archive.enabled() || s.retrieval.rules.is_empty() {
            return Ok(None);
        }
        let archive = Archive::new(&s.archive)?;
        Ok(Some(Self {
            knowledge: Knowledge::new(archive.pool().clone()),
            settings: s.retrieval.clone(),
            bytes_per_token: s.context.approx_bytes_per_token,
        }))
    }

    pub fn settings(&self) -> &RetrievalSettings {
        &self.settings
    }

    /// The best chunks of `tenant`'s `collection` for `question`, packed under the budget,
    /// within `retrieval.timeout_ms`. Records the `retrieval` stage of the turn's TTFT.
    pub async fn retrieve(&self, tenant: &str, collection: &str, question: &str) -> Outcome {
        let began = Instant::now();
        let query = cut(question, self.settings.max_query_bytes);
        let search = self.knowledge.search(tenant, collection, query, &self.settings);
        let outcome = match tokio::time::timeout(Duration::from_millis(self.settings.timeout_ms), search).await {
            Ok(Ok(hits)) => match pack::pack(&hits, self.settings.budget_tokens, self.bytes_per_token) {
                Some(r) => Outcome::Packed(r),
                None => Outcome::Empty,
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, collection, "retrieval failed; answering without it");
                Outcome::Failed
            }
            Err(_) => {
                tracing::warn!(collection, "retrieval timed out; answering without it");
                Outcome::Timeout
            }
        };
        metrics::histogram!(m::TURN_RETRIEVAL_SECONDS).record(began.elapsed().as_secs_f64());
        metrics::counter!(m::RETRIEVALS, "outcome" => outcome.label()).increment(1);
        outcome
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_is_cut_at_a_character_boundary() {
        assert_eq!(super::cut("héllo", 2), "h");
        assert_eq!(super::cut("héllo", 3), "hé");
        assert_eq!(super::cut("abc", 10), "abc");
    }
}
