//! The Chat Completions request body, and what of it becomes the turn.
//!
//! The last message must be the user's: its text is the turn's message. The messages before it
//! are the turn's context when the request names no session (a stateless client sends its whole
//! conversation each time); with `X-Chatfleet-Session`, the session's stored history is the
//! context and only the request's system (and developer) messages are added to it.
//! Fields this ingress does not use (`tools`, `response_format`, `seed`, …) are ignored; `n`
//! above 1 and content other than text and images are refused.
//!
//! `image_url` parts of user messages are media by reference (see `crate::media`): the last
//! message's become the turn's attachments, and in a stateless request an earlier message's
//! travel with it as context. A `data:` URL is refused here; the `[media]` limits are checked by
//! the caller, which knows the settings and counts the outcome.

use serde::Deserialize;

use crate::gateway::error::ApiError;
use crate::gateway::ingress::IngressSettings;
use crate::payload::{Attachment, ContextMessage, TurnOpts};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A message's content: a string, or an array of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<ImageUrl>,
}

/// An `image_url` part's image (`detail` is the upstream's business and is not kept).
#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

/// What the request asks of chatfleet.
#[derive(Debug)]
pub struct Ask {
    /// The user's new message.
    pub text: String,
    pub opts: TurnOpts,
    /// The answer's token limit the client asked for (for `finish_reason: length`).
    pub max_tokens: Option<u64>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

impl InMessage {
    /// The message's text and images. Images are taken from user messages only (OpenAI's own
    /// rule), and are not yet checked against `[media]`.
    fn content(&self, i: usize) -> Result<(String, Vec<Attachment>), ApiError> {
        match &self.content {
            None => Ok((String::new(), Vec::new())),
            Some(Content::Text(t)) => Ok((t.clone(), Vec::new())),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                let mut images = Vec::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text, &p.image_url) {
                        ("text", Some(t), _) => out.push_str(t),
                        ("image_url", _, Some(img)) if self.role == "user" => {
                            let a = crate::media::from_image_url(&img.url)
                                .map_err(|e| bad(format!("messages[{i}]: {e}")))?;
                            images.push(a);
                        }
                        ("image_url", _, Some(_)) => {
                            return Err(bad(format!("messages[{i}]: only user messages may carry images")))
                        }
                        (kind, _, _) => {
                            return Err(bad(format!("messages[{i}]: content of type `{kind}` is not supported")))
                        }
                    }
                }
                Ok((out, images))
            }
        }
    }

    /// The role as chatfleet stores it (`developer` is OpenAI's newer name for `system`).
    fn role(&self, i: usize) -> Result<&'static str, ApiError> {
        match self.role.as_str() {
            "system" | "developer" => Ok("system"),
            "user" => Ok("user"),
            "assistant" => Ok("assistant"),
            other => {
                Err(bad(format!("messages[{i}]: role `{other}` is not supported (system, developer, user, assistant)")))
            }
        }
    }
}

impl ChatRequest {
    /// Checks the request and builds the turn. `stateful`: a session header names the session,
    /// whose history replaces the request's earlier turns.
    pub fn ask(&self, s: &IngressSettings, stateful: bool) -> Result<Ask, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("n must be 1"));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(bad("temperature must be between 0 and 2"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(bad("max_tokens must be at least 1"));
        }
        if self.user.as_ref().is_some_and(|u| u.len() > 256) {
            return Err(bad("user must be at most 256 bytes"));
        }
        let Some((last, earlier)) = self.messages.split_last() else {
            return Err(bad("messages must not be empty"));
        };
        if last.role(self.messages.len() - 1)? != "user" {
            return Err(bad("the last message must be the user's"));
        }
        let (text, attachments) = last.content(self.messages.len() - 1)?;
        if earlier.len() > s.max_context_messages {
            return Err(ApiError::TooLarge(format!(
                "{} messages before the last; the limit is {}",
                earlier.len(),
                s.max_context_messages
            )));
        }
        let mut context = Vec::new();
        let mut bytes = 0;
        for (i, m) in earlier.iter().enumerate() {
            let role = m.role(i)?;
            if stateful && role != "system" {
                continue;
            }
            let (text, attachments) = m.content(i)?;
            // The references are stored with the turn too, so they count against the bound.
            bytes += text.len() + attachments.iter().map(|a| a.url.len()).sum::<usize>();
            if text.is_empty() && attachments.is_empty() {
                continue;
            }
            context.push(ContextMessage { role: role.into(), text, attachments });
        }
        if bytes > s.max_context_bytes {
            return Err(ApiError::TooLarge(format!(
                "the earlier messages hold {bytes} bytes; the limit is {}",
                s.max_context_bytes
            )));
        }
        let opts = TurnOpts {
            model: self.model.clone().filter(|m| !m.is_empty()),
            max_tokens,
            temperature: self.temperature,
            user: self.user.clone(),
            context,
            attachments,
            ..Default::default()
        };
        Ok(Ask { text, opts, max_tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IngressSettings {
        IngressSettings {
            openai_cancel_on_close: true,
            aisdk_cancel_on_close: false,
            max_body_bytes: 1 << 20,
            max_context_messages: 4,
            max_context_bytes: 100,
            prejoined_per_tenant: 0,
            prejoined_tenants: 0,
        }
    }

    fn req(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_stateless_request_carries_its_earlier_messages_and_a_stateful_one_only_its_system_ones() {
        let r = req(serde_json::json!({
            "model": "m", "max_tokens": 9, "temperature": 0.2, "user": "u1",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "q1"}]},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}
            ]
        }));
        let a = r.ask(&settings(), false).unwrap();
        assert_eq!(a.text, "q2");
        let roles: Vec<(&str, &str)> = a.opts.context.iter().map(|c| (c.role.as_str(), c.text.as_str())).collect();
        assert_eq!(roles, [("system", "be brief"), ("user", "q1"), ("assistant", "a1")]);
        assert_eq!((a.opts.max_tokens, a.opts.temperature, a.opts.user.as_deref()), (Some(9), Some(0.2), Some("u1")));
        let a = r.ask(&settings(), true).unwrap();
        assert_eq!(
            a.opts.context,
            vec![ContextMessage { role: "system".into(), text: "be brief".into(), attachments: Vec::new() }]
        );
    }

    fn img(url: &str) -> serde_json::Value {
        serde_json::json!({"type": "image_url", "image_url": {"url": url, "detail": "low"}})
    }

    #[test]
    fn image_parts_of_the_last_message_are_the_turns_and_earlier_ones_travel_with_their_message() {
        let r = req(serde_json::json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "and this"}, img("https://m.test/a.png")]},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": [img("https://m.test/b.JPEG"), {"type": "text", "text": "now?"}]}
        ]}));
        let a = r.ask(&settings(), false).unwrap();
        assert_eq!(a.text, "now?");
        let got: Vec<_> =
            a.opts.attachments.iter().map(|a| (a.url.as_str(), a.content_type.as_str(), a.size)).collect();
        assert_eq!(got, [("https://m.test/b.JPEG", "image/jpeg", 0)]);
        assert_eq!(a.opts.context[0].text, "and this");
        assert_eq!(a.opts.context[0].attachments[0].content_type, "image/png");
        assert!(a.opts.context[1].attachments.is_empty());
        // With a session, the history holds the earlier images: the request's are not taken.
        assert!(r.ask(&settings(), true).unwrap().opts.context.is_empty());
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let s = settings();
        let cases = [
            serde_json::json!({"messages": []}),
            serde_json::json!({"messages": [{"role": "assistant", "content": "x"}]}),
            serde_json::json!({"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "x"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [img("data:image/png;base64,AAAA")]}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [img("https://m.test/no-extension")]}]}),
            serde_json::json!({"messages": [
                {"role": "system", "content": [img("https://m.test/a.png")]}, {"role": "user", "content": "x"}]}),
            serde_json::json!({"n": 2, "messages": [{"role": "user", "content": "x"}]}),
            serde_json::json!({"temperature": 3, "messages": [{"role": "user", "content": "x"}]}),
            serde_json::json!({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        ];
        for c in cases {
            assert!(matches!(req(c.clone()).ask(&s, false), Err(ApiError::BadRequest(_))), "{c}");
        }
        let many: Vec<_> = (0..6).map(|_| serde_json::json!({"role": "user", "content": "x"})).collect();
        assert!(matches!(req(serde_json::json!({"messages": many})).ask(&s, false), Err(ApiError::TooLarge(_))));
        let big = serde_json::json!({"messages": [{"role": "system", "content": "x".repeat(101)}, {"role": "user", "content": "x"}]});
        assert!(matches!(req(big).ask(&s, false), Err(ApiError::TooLarge(_))));
    }
}
