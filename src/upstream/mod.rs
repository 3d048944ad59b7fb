//! Real model upstreams: OpenAI-compatible and Anthropic streaming over HTTP, routing with
//! fallback, context packing under token budgets, and background summaries.
//!
//! - [`settings`]: `[upstreams.<name>]`, `[routing]`, `[context]`;
//! - [`router`]: the [`crate::model::Model`] the worker uses: rules, fallback chain, packing;
//! - [`canary`]: the stable split of a rule's sessions between its chain and a variant;
//! - [`client`]: one upstream: HTTP client, key, concurrency slots, timeouts;
//! - [`http`]: sending, error mapping (status, `retry-after`), SSE driving under timeouts;
//! - [`openai`], [`anthropic`]: the two wire formats;
//! - [`tokens`], [`pack`]: token counting and packing; [`usage`]: counting an answer's tokens
//!   when the upstream reports none;
//! - [`summary`]: the conversation sent to the model, and summaries of older history.

pub mod anthropic;
pub mod canary;
pub mod client;
pub mod http;
pub mod openai;
pub mod pack;
pub mod router;
pub mod settings;
pub mod summary;
pub mod tokens;
pub mod usage;

pub use router::Router;
