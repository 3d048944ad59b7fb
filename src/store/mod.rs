//! Redis: connections, the Functions library, and a typed call per Lua function.
//!
//! - [`Redis`] owns the connections of a process: a command pool with timeouts for everything
//!   non-blocking, plus factories for the dedicated clients that must not share it (a blocking
//!   XREADGROUP holds its connection; a subscriber connection runs only pub/sub).
//! - [`Store`] is the typed API over `lua/chatfleet.lua`: one method per function, each
//!   returning an enum of the function's outcomes.

mod conn;
mod functions;
mod quota;
mod reply;

pub use conn::{Redis, FUNCTIONS_LIBRARY, LIBRARY_NAME};
pub use functions::{
    CancelOutcome, Claimed, EnqueueOutcome, FinishArgs, LogRead, Opened, StartOutcome, Store, TurnAudit, TurnContext,
    WriteOutcome,
};
pub use quota::QuotaOutcome;

/// A failed Redis call or an unexpected reply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or could not be reached (includes timeouts).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A function replied with a shape this build does not know: a version mismatch or a bug.
    #[error("unexpected reply from {function}: {detail}")]
    Reply { function: &'static str, detail: String },
    /// A stored payload could not be decoded.
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
}
