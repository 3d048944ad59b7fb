//! Payloads stored in Redis: MessagePack maps with a version field `v`.
//!
//! `lua/chatfleet.lua` writes these with `cmsgpack.pack` and is the authority on their shape;
//! this module mirrors it for decoding. They are kept apart from the wire protocol
//! ([`crate::protocol`]) because they evolve under a different rule: stored data outlives a
//! deploy, so a reader must accept every version still in Redis.

use serde::{Deserialize, Serialize};

/// The payload version this build writes and reads.
pub const VERSION: u8 = 1;

/// A payload that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed payload: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("unsupported payload version {0}")]
    Version(u8),
}

/// A client-visible event as stored in a session log and published on its channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoredEvent {
    UserMessage {
        v: u8,
        turn_id: String,
        client_msg_id: String,
        text: String,
    },
    TurnStarted {
        v: u8,
        turn_id: String,
        attempt: u32,
    },
    Delta {
        v: u8,
        turn_id: String,
        text: String,
    },
    ToolStatus {
        v: u8,
        turn_id: String,
        name: String,
        state: String,
    },
    Reset {
        v: u8,
        turn_id: String,
        attempt: u32,
    },
    Done {
        v: u8,
        turn_id: String,
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    },
    Error {
        v: u8,
        turn_id: String,
        code: String,
        message: String,
    },
    Cancelled {
        v: u8,
        turn_id: String,
    },
}

impl StoredEvent {
    fn version(&self) -> u8 {
        match self {
            Self::UserMessage { v, .. }
            | Self::TurnStarted { v, .. }
            | Self::Delta { v, .. }
            | Self::ToolStatus { v, .. }
            | Self::Reset { v, .. }
            | Self::Done { v, .. }
            | Self::Error { v, .. }
            | Self::Cancelled { v, .. } => *v,
        }
    }
}

/// A conversation message in a session's history list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub v: u8,
    /// `user` or `assistant`.
    pub role: String,
    pub turn_id: String,
    pub text: String,
    /// For assistant messages: `done`, `cancelled` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The live message on a session channel: `[seq, event, epoch]`.
#[derive(Debug, Deserialize)]
struct Published(u64, serde_bytes::ByteBuf, String);

/// A decoded channel message.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    pub seq: u64,
    pub event: StoredEvent,
    /// The session epoch the event belongs to.
    pub epoch: String,
}

/// Decodes a stored event, checking its version.
pub fn decode_event(bytes: &[u8]) -> Result<StoredEvent, PayloadError> {
    let ev: StoredEvent = rmp_serde::from_slice(bytes)?;
    match ev.version() {
        VERSION => Ok(ev),
        other => Err(PayloadError::Version(other)),
    }
}

/// Decodes a history message, checking its version.
pub fn decode_history(bytes: &[u8]) -> Result<HistoryMessage, PayloadError> {
    let msg: HistoryMessage = rmp_serde::from_slice(bytes)?;
    if msg.v != VERSION {
        return Err(PayloadError::Version(msg.v));
    }
    Ok(msg)
}

/// Decodes a channel message.
pub fn decode_published(bytes: &[u8]) -> Result<PublishedEvent, PayloadError> {
    let Published(seq, body, epoch) = rmp_serde::from_slice(bytes)?;
    Ok(PublishedEvent { seq, event: decode_event(&body)?, epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_named_maps() {
        let ev = StoredEvent::Delta { v: 1, turn_id: "t".into(), text: "héllo".into() };
        let bytes = rmp_serde::to_vec_named(&ev).unwrap();
        assert_eq!(decode_event(&bytes).unwrap(), ev);
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let ev = StoredEvent::Cancelled { v: 9, turn_id: "t".into() };
        let bytes = rmp_serde::to_vec_named(&ev).unwrap();
        assert!(matches!(decode_event(&bytes), Err(PayloadError::Version(9))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xc1", b"\x92\x01", b"\x81\xa4type\xa5bogus"] {
            assert!(decode_event(bytes).is_err());
            assert!(decode_published(bytes).is_err());
        }
    }
}
