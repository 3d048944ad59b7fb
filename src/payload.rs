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
        /// Media the message refers to (never the bytes: see [`Attachment`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
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
        /// The worker counted the tokens itself (the upstream reported none).
        #[serde(default)]
        usage_estimated: bool,
        /// Chunks of reference material the answer's prompt held (retrieval). Absent in events
        /// written before retrieval existed, and when none were packed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        citations: Vec<StoredCitation>,
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

/// A citation as stored in a `done` event (a map `{document, chunk, title?}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCitation {
    pub document: String,
    pub chunk: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
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
    /// For user messages: the media they refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A reference to media the product stores itself (object storage it owns), carried by a user
/// message. chatfleet stores and forwards the reference only; the bytes never pass through a
/// gateway or a worker, and the upstream fetches the URL itself. `size` and `content_type` are
/// what the client declares (the product's storage signed them); the gateway checks them against
/// `[media]` limits (see `crate::media`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    pub content_type: String,
    /// Bytes; 0 (or absent on the wire) when the client did not declare it: the OpenAI and AI
    /// SDK ingresses cannot, and a v1 client may not know it (see `crate::media`).
    #[serde(default)]
    pub size: u64,
    /// A display name (a file name), when the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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

/// Encodes a history message as the MessagePack map `lua/chatfleet.lua` writes (restores from
/// the archive push these).
pub fn encode_history(m: &HistoryMessage) -> Vec<u8> {
    rmp_serde::to_vec_named(m).expect("history messages serialize")
}

/// Decodes a channel message.
pub fn decode_published(bytes: &[u8]) -> Result<PublishedEvent, PayloadError> {
    let Published(seq, body, epoch) = rmp_serde::from_slice(bytes)?;
    Ok(PublishedEvent { seq, event: decode_event(&body)?, epoch })
}

/// Options of a turn from the client's `send` (the model asked for) or from the OpenAI-compatible
/// ingress (sampling options and the request's own context). The gateway encodes them into
/// `enqueue_turn`'s opaque `opts`, and `start_turn` hands them to the worker. Empty bytes (turns
/// from older gateways, `ctl dlq replay`) mean all defaults; every field after `v` is optional,
/// so options written by an older gateway still decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnOpts {
    pub v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Most tokens of the answer the client asked for; the upstream's own limit still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling temperature the client asked for, passed to upstreams that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The end user the client named (OpenAI's `user`), passed to upstreams that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Messages the client sent with this turn, placed between the deployment's system prompt and
    /// the session's history (a stateless OpenAI request carries its whole conversation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<ContextMessage>,
    /// The user who sent the turn (the gateway's identity), for the archive's ownership of the
    /// conversation. Set when an archive is configured. Not `user`, which is the end user the
    /// client named for the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The user message's attachments, kept with the turn so the archive and a dead-letter
    /// replay have them (the session's history and log carry them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// One message of a turn's client-supplied context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub text: String,
    /// A user message's media (a stateless OpenAI request's earlier image parts), checked
    /// against `[media]` like the turn's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Default for TurnOpts {
    fn default() -> Self {
        Self {
            v: VERSION,
            model: None,
            max_tokens: None,
            temperature: None,
            user: None,
            context: Vec::new(),
            owner: None,
            attachments: Vec::new(),
        }
    }
}

/// Encodes turn options as a MessagePack map.
pub fn encode_turn_opts(opts: &TurnOpts) -> Vec<u8> {
    rmp_serde::to_vec_named(opts).expect("turn options serialize")
}

/// Decodes turn options; empty bytes are the defaults.
pub fn decode_turn_opts(bytes: &[u8]) -> Result<TurnOpts, PayloadError> {
    if bytes.is_empty() {
        return Ok(TurnOpts::default());
    }
    let opts: TurnOpts = rmp_serde::from_slice(bytes)?;
    if opts.v != VERSION {
        return Err(PayloadError::Version(opts.v));
    }
    Ok(opts)
}

/// What became of one tool call of a turn, kept in `<base>:turn:<tid>:tools` (written with its
/// `tool_status` event) so that an attempt taking over the turn knows what already ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub v: u8,
    /// The tool round of the turn the call belongs to (0 for the first).
    #[serde(default)]
    pub round: u32,
    pub name: String,
    /// The argument object as the model wrote it.
    pub args: String,
    /// `running`, `done`, `failed` or `timed_out`.
    pub state: String,
    /// What the model was (or will be) told; empty while running.
    #[serde(default)]
    pub result: String,
}

/// Encodes a tool record as a MessagePack map.
pub fn encode_tool_record(r: &ToolRecord) -> Vec<u8> {
    rmp_serde::to_vec_named(r).expect("tool records serialize")
}

/// Decodes a tool record, checking its version.
pub fn decode_tool_record(bytes: &[u8]) -> Result<ToolRecord, PayloadError> {
    let r: ToolRecord = rmp_serde::from_slice(bytes)?;
    if r.v != VERSION {
        return Err(PayloadError::Version(r.v));
    }
    Ok(r)
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
    fn a_done_event_decodes_with_and_without_citations() {
        // As a build before retrieval stored it: no `citations` key.
        #[derive(Serialize)]
        struct OldDone<'a> {
            v: u8,
            #[serde(rename = "type")]
            kind: &'a str,
            turn_id: &'a str,
            prompt_tokens: u64,
            completion_tokens: u64,
        }
        let old = OldDone { v: 1, kind: "done", turn_id: "t", prompt_tokens: 3, completion_tokens: 4 };
        let Ok(StoredEvent::Done { citations, completion_tokens: 4, .. }) =
            decode_event(&rmp_serde::to_vec_named(&old).unwrap())
        else {
            panic!("an old done event must decode")
        };
        assert!(citations.is_empty());
        let cited = StoredCitation { document: "refunds".into(), chunk: 2, title: None };
        let ev = StoredEvent::Done {
            v: 1,
            turn_id: "t".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            usage_estimated: false,
            citations: vec![cited],
        };
        assert_eq!(decode_event(&rmp_serde::to_vec_named(&ev).unwrap()).unwrap(), ev);
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

    #[test]
    fn turn_options_and_tool_records_round_trip_and_empty_options_are_defaults() {
        assert_eq!(decode_turn_opts(b"").unwrap(), TurnOpts::default());
        let o = TurnOpts { v: VERSION, model: Some("gpt-4o".into()), owner: Some("u1".into()), ..Default::default() };
        assert_eq!(decode_turn_opts(&encode_turn_opts(&o)).unwrap(), o);
        let full = TurnOpts {
            max_tokens: Some(7),
            temperature: Some(0.5),
            user: Some("u".into()),
            context: vec![ContextMessage { role: "system".into(), text: "be brief".into(), attachments: Vec::new() }],
            ..o.clone()
        };
        assert_eq!(decode_turn_opts(&encode_turn_opts(&full)).unwrap(), full);
        // Options an older gateway wrote (model only) still decode.
        assert_eq!(decode_turn_opts(&encode_turn_opts(&o)).unwrap().context, vec![]);
        let r = ToolRecord {
            v: VERSION,
            round: 1,
            name: "clock".into(),
            args: "{}".into(),
            state: "done".into(),
            result: "x".into(),
        };
        assert_eq!(decode_tool_record(&encode_tool_record(&r)).unwrap(), r);
        assert!(decode_turn_opts(b"\xc1").is_err());
    }
}
