//! `[retrieval]`: knowledge collections in the archive's PostgreSQL, how documents are chunked,
//! and which sessions get reference material in their prompt (`[[retrieval.rules]]`).
//!
//! Retrieval is off while `archive.url` is empty: the rules are then ignored and the knowledge
//! API answers `not_found`, like the conversations API.

use serde::Deserialize;

use crate::model::RouteHints;
use crate::settings_base::SettingsError;

/// Limits and timeouts of retrieval, and its rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSettings {
    /// Longest a turn waits for its search (connecting included). Past it, or when PostgreSQL
    /// fails, the answer goes on without reference material and the turn's audit says so.
    pub timeout_ms: u64,
    /// Most tokens of reference material in one prompt, the block's framing included (counted
    /// as `context.approx_bytes_per_token` bytes per token). Reserved in every upstream's
    /// prompt budget when rules exist (settings validation checks that it fits).
    pub budget_tokens: u64,
    /// Best-ranked chunks fetched per turn; those that fit `budget_tokens` are packed.
    pub top_k: u32,
    /// Most chunks a search ranks (those holding two of the question's words, else one): bounds
    /// its cost, since ranking reads each; past it, an arbitrary subset of the matches is ranked.
    pub max_candidates: u32,
    /// A question's words found in more than this share of all chunks (PostgreSQL's statistics
    /// of the search vectors, refreshed by `ANALYZE`) are too common to tell chunks apart and
    /// are left out of the search; the rarest words are always kept (see `retrieval::store`).
    /// 1.0 keeps every word.
    pub common_word_share: f64,
    /// Largest chunk, in tokens (same count): documents are cut at paragraph, else sentence,
    /// else word boundaries to stay under it.
    pub chunk_tokens: u64,
    /// Tokens of whole sentences that a chunk repeats from the end of the previous one, so a
    /// fact that straddles a cut is still found whole in one chunk.
    pub chunk_overlap_tokens: u64,
    /// Largest document text accepted by the ingest API, in bytes (a bigger body is `too_large`).
    pub max_document_bytes: usize,
    /// Most documents in one collection of one tenant (an ingest past it is refused).
    pub max_documents_per_collection: u64,
    /// The user's message is cut to this many bytes before it becomes a search query.
    pub max_query_bytes: usize,
    /// Largest page of `GET /v1/knowledge/{collection}/documents`.
    pub page_max: u32,
    /// Scope a token's `scope` claim (space-separated, as in OAuth 2) must hold to use the
    /// knowledge API: ingest, list, delete and search. In `auth.mode = "dev"` everyone may.
    pub manage_scope: String,
    /// Which sessions use which collection, first match wins (`[[retrieval.rules]]`).
    pub rules: Vec<RetrievalRule>,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 300,
            budget_tokens: 1500,
            top_k: 8,
            max_candidates: 1000,
            common_word_share: 0.05,
            chunk_tokens: 200,
            chunk_overlap_tokens: 40,
            max_document_bytes: 1 << 20,
            max_documents_per_collection: 100_000,
            max_query_bytes: 2048,
            page_max: 100,
            manage_scope: "knowledge:write".into(),
            rules: Vec::new(),
        }
    }
}

/// A retrieval rule: every condition given must hold; the session's own tenant's collection of
/// that name is searched (a rule never reaches another tenant's documents).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetrievalRule {
    pub tenant: Option<String>,
    /// A flag of the session (a member of its `<base>:flags` set).
    pub flag: Option<String>,
    /// The client asked for this model in its `send`.
    pub model: Option<String>,
    /// The collection searched.
    pub collection: String,
}

impl RetrievalSettings {
    /// The collection a turn searches: the first rule that matches.
    pub fn collection_for(&self, h: &RouteHints) -> Option<&str> {
        let matches = |r: &&RetrievalRule| {
            r.tenant.as_ref().map_or(true, |t| *t == h.tenant)
                && r.flag.as_ref().map_or(true, |f| h.flags.contains(f))
                && r.model.as_ref().map_or(true, |m| h.model.as_ref() == Some(m))
        };
        self.rules.iter().find(matches).map(|r| r.collection.as_str())
    }

    /// Bytes of the reference block at most, for the prompt budget check (`None` without rules).
    pub fn pinned_bytes(&self, bytes_per_token: f64) -> Option<usize> {
        (!self.rules.is_empty()).then(|| (self.budget_tokens as f64 * bytes_per_token).ceil() as usize)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), SettingsError> {
            ok.then_some(()).ok_or_else(|| SettingsError::Invalid { key, reason: reason.into() })
        }
        check((1..=10_000).contains(&self.timeout_ms), "retrieval.timeout_ms", "must be 1..=10000")?;
        check(self.budget_tokens >= 64, "retrieval.budget_tokens", "must be at least 64")?;
        check((1..=100).contains(&self.top_k), "retrieval.top_k", "must be 1..=100")?;
        check(self.max_candidates >= self.top_k, "retrieval.max_candidates", "must be at least retrieval.top_k")?;
        check(
            self.common_word_share > 0.0 && self.common_word_share <= 1.0,
            "retrieval.common_word_share",
            "must be in (0, 1]",
        )?;
        check(
            (16..=self.budget_tokens).contains(&self.chunk_tokens),
            "retrieval.chunk_tokens",
            "must be 16..=retrieval.budget_tokens",
        )?;
        check(
            self.chunk_overlap_tokens < self.chunk_tokens / 2 + 1,
            "retrieval.chunk_overlap_tokens",
            "must be at most half of retrieval.chunk_tokens",
        )?;
        check(self.max_document_bytes >= 1024, "retrieval.max_document_bytes", "must be at least 1024")?;
        check(self.max_documents_per_collection >= 1, "retrieval.max_documents_per_collection", "must be at least 1")?;
        check(self.max_query_bytes >= 16, "retrieval.max_query_bytes", "must be at least 16")?;
        check((1..=1000).contains(&self.page_max), "retrieval.page_max", "must be 1..=1000")?;
        check(!self.manage_scope.trim().is_empty(), "retrieval.manage_scope", "must not be empty")?;
        for r in &self.rules {
            check(
                crate::keys::is_valid_component(&r.collection),
                "retrieval.rules.collection",
                "1-64 characters of [A-Za-z0-9_.-]",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_names_the_collection() {
        let mut s = RetrievalSettings::default();
        s.rules.push(RetrievalRule {
            tenant: Some("acme".into()),
            collection: "handbook".into(),
            ..Default::default()
        });
        s.rules.push(RetrievalRule { collection: "faq".into(), ..Default::default() });
        s.validate().unwrap();
        let h = |t: &str| RouteHints { tenant: t.into(), ..Default::default() };
        assert_eq!(s.collection_for(&h("acme")), Some("handbook"));
        assert_eq!(s.collection_for(&h("other")), Some("faq"));
        s.rules.pop();
        assert_eq!(s.collection_for(&h("other")), None);
        s.rules[0].collection = "no/slash".into();
        assert!(s.validate().unwrap_err().to_string().contains("retrieval.rules.collection"));
    }
}
