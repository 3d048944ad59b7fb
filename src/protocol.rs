//! Client protocol v1: JSON text frames (docs/protocol.md is the reference for client authors).
//!
//! Every frame is an object with a `type`. Events (`seq` present) are the conversation; control
//! frames (no `seq`) are about the connection. The same event JSON is used by WebSocket, SSE and
//! long-poll.

use serde::{Deserialize, Serialize};

use crate::payload::{Attachment, HistoryMessage, StoredEvent};

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Opens (or resumes) the session. Must be the first frame on a WebSocket.
    Hello {
        session_id: String,
        /// The last seq the client has; the server replays what came after it.
        #[serde(default)]
        last_seq: Option<u64>,
        /// The epoch `last_seq` belongs to; a different current epoch forces a snapshot.
        #[serde(default)]
        epoch: Option<String>,
        /// Merge deltas for this connection over this window (low-power clients).
        #[serde(default)]
        coalesce_ms: Option<u64>,
    },
    /// A user message. Retrying with the same `client_msg_id` never creates a second turn.
    Send {
        client_msg_id: String,
        text: String,
        /// The model to answer with, when the deployment's routing rules offer a choice
        /// (`[[routing.rules]] model = …`); a name no rule knows gets the default model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// Media the message refers to, by URL (the bytes never go through chatfleet); checked
        /// against the `[media]` limits.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    /// Stop a turn.
    Cancel { turn_id: String },
    /// Application-level keepalive; answered with `pong`.
    Ping,
}

/// Why a request or frame was refused. Serialized as the `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Too many frames or sends; `retry_after_ms` says when to try again.
    RateLimited,
    /// A frame or message exceeded its size limit.
    TooLarge,
    /// The frame could not be understood (broken JSON, unknown type, bad field).
    BadRequest,
    /// Missing or invalid credentials.
    Unauthorized,
    /// The credentials do not allow this session or turn.
    Forbidden,
    /// A turn of this session is still running; send again after it ends.
    Busy,
    /// The system is overloaded; retry after `retry_after_ms`.
    Degraded,
    /// No such turn in this session.
    NotFound,
    /// The server could not do it right now (e.g. Redis unreachable); safe to retry.
    Unavailable,
    /// The tenant's quota (turns in flight, turns per minute) is used up; `retry_after_ms` says
    /// when to try again when it is known.
    QuotaExceeded,
    /// This user has too many connections open on this gateway; close one first.
    TooManyConnections,
}

/// A frame to the client that is not a conversation event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// The session is open; events with seq > `seq` follow.
    Welcome { session_id: String, epoch: String, seq: u64, resume: ResumeKind },
    /// A `send` was stored; `seq` is its `user_message` event.
    Ack { client_msg_id: String, turn_id: String, seq: u64 },
    /// The whole visible state at `seq`, sent instead of a replay.
    Snapshot {
        epoch: String,
        seq: u64,
        messages: Vec<SnapshotMessage>,
        /// The turn running now, with its text so far.
        active: Option<ActiveTurn>,
        reason: String,
    },
    /// A refused frame or request. The connection stays open unless it is followed by a close.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server is going away; reconnect (resume) now, possibly to another gateway.
    Reconnect { reason: String },
    /// Answer to `ping`.
    Pong,
}

/// How `welcome` continues: a replay of missed events, or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeKind {
    Replay,
    Snapshot,
}

/// One message of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMessage {
    pub role: String,
    pub turn_id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// The running turn in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveTurn {
    pub turn_id: String,
    pub text: String,
}

/// Token counts of a finished turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when the upstream reported no usage and the worker counted the tokens itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// A chunk of reference material an answer's prompt held: the document's id, the chunk's index
/// in it (from 0), and the document's title when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citation {
    pub document: String,
    pub chunk: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A conversation event, as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Session seq: strictly increasing by one per event.
    pub seq: u64,
    /// Set on a delta that merges several (a slow connection): it covers `first_seq..=seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened, by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    UserMessage {
        turn_id: String,
        client_msg_id: String,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    TurnStarted {
        turn_id: String,
        attempt: u32,
    },
    Delta {
        turn_id: String,
        text: String,
    },
    ToolStatus {
        turn_id: String,
        name: String,
        state: String,
    },
    /// The turn is being regenerated: drop its text so far.
    Reset {
        turn_id: String,
        attempt: u32,
    },
    Done {
        turn_id: String,
        usage: Usage,
        /// The reference material the answer's prompt held (retrieval), in packing order;
        /// omitted when there was none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        citations: Vec<Citation>,
    },
    Error {
        turn_id: String,
        code: String,
        message: String,
    },
    Cancelled {
        turn_id: String,
    },
}

impl EventBody {
    pub fn turn_id(&self) -> &str {
        match self {
            Self::UserMessage { turn_id, .. }
            | Self::TurnStarted { turn_id, .. }
            | Self::Delta { turn_id, .. }
            | Self::ToolStatus { turn_id, .. }
            | Self::Reset { turn_id, .. }
            | Self::Done { turn_id, .. }
            | Self::Error { turn_id, .. }
            | Self::Cancelled { turn_id } => turn_id,
        }
    }

    /// True for the event that ends a turn.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Error { .. } | Self::Cancelled { .. })
    }
}

impl From<StoredEvent> for EventBody {
    fn from(ev: StoredEvent) -> Self {
        match ev {
            StoredEvent::UserMessage { turn_id, client_msg_id, text, attachments, .. } => {
                Self::UserMessage { turn_id, client_msg_id, text, attachments }
            }
            StoredEvent::TurnStarted { turn_id, attempt, .. } => Self::TurnStarted { turn_id, attempt },
            StoredEvent::Delta { turn_id, text, .. } => Self::Delta { turn_id, text },
            StoredEvent::ToolStatus { turn_id, name, state, .. } => Self::ToolStatus { turn_id, name, state },
            StoredEvent::Reset { turn_id, attempt, .. } => Self::Reset { turn_id, attempt },
            StoredEvent::Done { turn_id, prompt_tokens, completion_tokens, usage_estimated, citations, .. } => {
                let usage = Usage { prompt_tokens, completion_tokens, estimated: usage_estimated };
                let citations = citations
                    .into_iter()
                    .map(|c| Citation { document: c.document, chunk: c.chunk, title: c.title })
                    .collect();
                Self::Done { turn_id, usage, citations }
            }
            StoredEvent::Error { turn_id, code, message, .. } => Self::Error { turn_id, code, message },
            StoredEvent::Cancelled { turn_id, .. } => Self::Cancelled { turn_id },
        }
    }
}

impl From<HistoryMessage> for SnapshotMessage {
    fn from(m: HistoryMessage) -> Self {
        Self { role: m.role, turn_id: m.turn_id, text: m.text, status: m.status, attachments: m.attachments }
    }
}

/// Any frame the server sends, for clients (tests, the bench tool) that parse them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ServerMsg {
    Event(Event),
    Control(ControlMsg),
}

/// A client frame that could not be decoded, with a message safe to show the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Decodes a client frame. serde_json bounds nesting depth (128), so hostile nesting fails here.
pub fn decode_client(text: &str) -> Result<ClientMsg, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError(format!("invalid frame: {e}")))
}

/// Serializes a server frame. These types always serialize; a failure would be a bug.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol types serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_with_seq_and_type() {
        let ev = Event { seq: 7, first_seq: None, body: EventBody::Delta { turn_id: "t1".into(), text: "hi".into() } };
        assert_eq!(encode(&ev), r#"{"seq":7,"type":"delta","turn_id":"t1","text":"hi"}"#);
        let back: ServerMsg = serde_json::from_str(&encode(&ev)).unwrap();
        assert_eq!(back, ServerMsg::Event(ev));
    }

    #[test]
    fn client_frames_decode_and_unknown_ones_fail() {
        assert_eq!(decode_client(r#"{"type":"ping"}"#).unwrap(), ClientMsg::Ping);
        let hello = decode_client(r#"{"type":"hello","session_id":"s","last_seq":3}"#).unwrap();
        assert!(matches!(hello, ClientMsg::Hello { last_seq: Some(3), .. }));
        for bad in [r#"{"type":"nope"}"#, "{", r#"{"type":"send","text":"x"}"#, "[]", "null"] {
            assert!(decode_client(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000);
        assert!(decode_client(&deep).is_err());
    }

    #[test]
    fn control_frames_parse_as_control_not_event() {
        let m = encode(&ControlMsg::Error { code: ErrorCode::Busy, message: "x".into(), retry_after_ms: Some(5) });
        assert!(matches!(serde_json::from_str::<ServerMsg>(&m).unwrap(), ServerMsg::Control(_)));
    }
}
