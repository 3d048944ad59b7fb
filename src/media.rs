//! Media by reference: the `[media]` limits a user message's attachments are checked against, and
//! how an attachment reaches an upstream.
//!
//! An attachment is a URL into object storage the product owns, with the content type and size
//! the product's storage recorded. chatfleet stores and forwards that reference only: no gateway
//! or worker ever fetches the URL, so a large upload costs the fleet nothing and the product keeps
//! its own access control (signed URLs, expiry). The upstream fetches the URL itself, which is
//! why the URL must be one the upstream can reach and the product trusts (`url_prefixes`).
//!
//! A declared size is checked against `max_bytes`; it is what the client says, since chatfleet
//! never sees the bytes. Size 0 is "not declared": the OpenAI and AI SDK ingresses cannot declare
//! one (an `image_url` part is a URL only, an AI SDK `file` part a URL and a media type), and a v1
//! client may not know it (the chat page's attach-by-URL control). The upstream, which fetches
//! the bytes, applies its own limit then. An `image_url` part's type is told from its URL's path
//! (`.png` is `image/png`). Inline bytes (`data:` URLs) are refused on every path.

use serde::Deserialize;

use crate::model::{ChatMessage, Role};
use crate::payload::Attachment;
use crate::settings_base::SettingsError;

/// `[media]`: what a message may refer to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Most attachments on one message. 0 refuses every attachment.
    pub max_attachments: usize,
    /// Largest declared size of one attachment, in bytes.
    pub max_bytes: u64,
    /// Content types accepted (lowercase, exact: `image/png`).
    pub content_types: Vec<String>,
    /// The URL prefixes an attachment may start with: the product's own storage, e.g.
    /// `https://media.example.com/uploads/`. Each ends with `/`, so a prefix cannot be extended
    /// into another host (`https://media.example.com.evil.test/`). Empty: attachments are off.
    pub url_prefixes: Vec<String>,
    /// Longest attachment URL, in bytes (signed URLs are long; the bound keeps history small).
    pub max_url_bytes: usize,
    /// Longest display name, in bytes.
    pub max_name_bytes: usize,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_attachments: 4,
            max_bytes: 20 * 1024 * 1024,
            content_types: ["image/png", "image/jpeg", "image/webp", "image/gif"].map(String::from).to_vec(),
            url_prefixes: Vec::new(),
            max_url_bytes: 2048,
            max_name_bytes: 255,
        }
    }
}

/// Why an attachment was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Over a size bound (count, bytes, URL length).
    #[error("{0}")]
    TooLarge(String),
    /// Not acceptable at all (type, URL, name).
    #[error("{0}")]
    Refused(String),
}

impl MediaSettings {
    /// Checked at start-up: every prefix is an absolute http(s) URL ending in `/`.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for p in &self.url_prefixes {
            let ok = url::Url::parse(p).is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.has_host())
                && p.ends_with('/');
            if !ok {
                return Err(SettingsError::Invalid {
                    key: "media.url_prefixes",
                    reason: "each must be an absolute http(s) URL ending in /".into(),
                });
            }
        }
        if self.content_types.iter().any(|t| t.is_empty() || *t != t.to_ascii_lowercase()) {
            return Err(SettingsError::Invalid {
                key: "media.content_types",
                reason: "must be lowercase content types such as image/png".into(),
            });
        }
        Ok(())
    }

    /// Checks a message's attachments and returns them normalised (content type lowercased, the
    /// URL as parsed, so the stored reference is the one that was checked). A size of 0 is "not
    /// declared" (see the module doc).
    pub fn check(&self, attachments: &[Attachment]) -> Result<Vec<Attachment>, MediaError> {
        if attachments.is_empty() {
            return Ok(Vec::new());
        }
        if self.url_prefixes.is_empty() || self.max_attachments == 0 {
            return Err(MediaError::Refused("attachments are not enabled on this deployment".into()));
        }
        if attachments.len() > self.max_attachments {
            return Err(MediaError::TooLarge(format!("at most {} attachments per message", self.max_attachments)));
        }
        attachments.iter().map(|a| self.check_one(a)).collect()
    }

    fn check_one(&self, a: &Attachment) -> Result<Attachment, MediaError> {
        if a.url.len() > self.max_url_bytes {
            return Err(MediaError::TooLarge(format!("an attachment URL is over {} bytes", self.max_url_bytes)));
        }
        // Parsed, then compared in its serialised form: what is checked is what is stored and
        // what the upstream will fetch (no `..`, case or escaping tricks around the prefix).
        let url = url::Url::parse(&a.url).map_err(|_| MediaError::Refused("an attachment URL is not a URL".into()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(MediaError::Refused("an attachment URL must not carry credentials".into()));
        }
        let url = String::from(url);
        if !self.url_prefixes.iter().any(|p| url.starts_with(p.as_str())) {
            return Err(MediaError::Refused("an attachment URL is outside the allowed storage".into()));
        }
        let content_type = a.content_type.trim().to_ascii_lowercase();
        if !self.content_types.contains(&content_type) {
            return Err(MediaError::Refused(format!("attachment type {content_type:?} is not accepted")));
        }
        if a.size > self.max_bytes {
            return Err(MediaError::TooLarge(format!("an attachment is over {} bytes", self.max_bytes)));
        }
        if let Some(name) = &a.name {
            if name.len() > self.max_name_bytes || name.chars().any(char::is_control) {
                return Err(MediaError::Refused(format!(
                    "an attachment name must be at most {} bytes, without control characters",
                    self.max_name_bytes
                )));
            }
        }
        Ok(Attachment { url, content_type, size: a.size, name: a.name.clone() })
    }
}

/// Refuses inline bytes: chatfleet takes media by reference only.
fn by_reference(url: &str) -> Result<(), MediaError> {
    match url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("data:")) {
        true => Err(MediaError::Refused(
            "data: URLs are not accepted: media goes by reference (upload it to storage and send its URL)".into(),
        )),
        false => Ok(()),
    }
}

/// An OpenAI `image_url` part as an attachment to check: its content type told from the URL's
/// path (the part has no type field), its size not declared.
pub fn from_image_url(url: &str) -> Result<Attachment, MediaError> {
    by_reference(url)?;
    let parsed = url::Url::parse(url).map_err(|_| MediaError::Refused("an image URL is not a URL".into()))?;
    let content_type = mime_guess::from_path(parsed.path()).first().map(|m| m.essence_str().to_ascii_lowercase());
    let Some(content_type) = content_type else {
        return Err(MediaError::Refused(
            "an image URL's type cannot be told from its path: it must end in an extension such as .png".into(),
        ));
    };
    Ok(Attachment { url: url.to_string(), content_type, size: 0, name: None })
}

/// An AI SDK `file` part (`url`, `mediaType`, optional `filename`) as an attachment to check.
pub fn from_file_part(url: &str, media_type: &str, filename: Option<&str>) -> Result<Attachment, MediaError> {
    by_reference(url)?;
    Ok(Attachment {
        url: url.to_string(),
        content_type: media_type.to_string(),
        size: 0,
        name: filename.map(String::from),
    })
}

/// `messages` as an upstream that takes `accepted` content types by URL sees them: attachments
/// of other types become a line of the message's text naming them, so the model still knows
/// they exist (and can say it cannot see them) instead of losing them silently.
pub fn for_upstream(messages: &[ChatMessage], accepted: &[String]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| {
            if m.attachments.iter().all(|a| accepted.contains(&a.content_type)) {
                return m.clone();
            }
            let mut m = m.clone();
            let (kept, described): (Vec<_>, Vec<_>) =
                m.attachments.drain(..).partition(|a| accepted.contains(&a.content_type));
            for a in described {
                let name = a.name.as_deref().unwrap_or("unnamed");
                let size = match a.size {
                    0 => String::new(),
                    n => format!(", {n} bytes"),
                };
                m.text.push_str(&format!("\n[attachment {name} ({}{size}): {}]", a.content_type, a.url));
            }
            m.attachments = kept;
            m
        })
        .collect()
}

/// True for a user message that carries attachments (only user messages may).
pub fn has_media(m: &ChatMessage) -> bool {
    m.role == Role::User && !m.attachments.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> MediaSettings {
        MediaSettings { url_prefixes: vec!["https://media.example.com/u/".into()], ..Default::default() }
    }

    fn att(url: &str, ct: &str, size: u64) -> Attachment {
        Attachment { url: url.into(), content_type: ct.into(), size, name: Some("cat.png".into()) }
    }

    #[test]
    fn an_attachment_in_the_allowed_storage_passes_normalised() {
        let got = on().check(&[att("https://MEDIA.example.com/u/a%20b.png", "Image/PNG", 10)]).unwrap();
        assert_eq!(got[0].url, "https://media.example.com/u/a%20b.png");
        assert_eq!(got[0].content_type, "image/png");
    }

    #[test]
    fn refusals_name_the_problem() {
        let s = on();
        let refused = |a: Attachment| s.check(&[a]).unwrap_err();
        assert!(matches!(
            refused(att("https://media.example.com.evil.test/u/x", "image/png", 1)),
            MediaError::Refused(_)
        ));
        assert!(matches!(refused(att("https://media.example.com/u/../../x", "image/png", 1)), MediaError::Refused(_)));
        assert!(matches!(refused(att("https://me:pw@media.example.com/u/x", "image/png", 1)), MediaError::Refused(_)));
        assert!(matches!(refused(att("data:image/png;base64,AAAA", "image/png", 1)), MediaError::Refused(_)));
        assert!(matches!(refused(att("https://media.example.com/u/x", "text/html", 1)), MediaError::Refused(_)));
        assert_eq!(s.check(&[att("https://media.example.com/u/x", "image/png", 0)]).unwrap()[0].size, 0);
        assert!(matches!(
            refused(att("https://media.example.com/u/x", "image/png", 21 << 20)),
            MediaError::TooLarge(_)
        ));
        let long = format!("https://media.example.com/u/{}", "a".repeat(3000));
        assert!(matches!(refused(att(&long, "image/png", 1)), MediaError::TooLarge(_)));
        let five: Vec<_> = (0..5).map(|_| att("https://media.example.com/u/x", "image/png", 1)).collect();
        assert!(matches!(s.check(&five), Err(MediaError::TooLarge(_))));
        let off = MediaSettings::default();
        assert!(matches!(
            off.check(&[att("https://media.example.com/u/x", "image/png", 1)]),
            Err(MediaError::Refused(_))
        ));
        assert_eq!(off.check(&[]), Ok(Vec::new()));
    }

    #[test]
    fn ingress_parts_are_references_with_a_known_type() {
        let a = from_image_url("https://media.example.com/u/cat.JPG?sig=x").unwrap();
        assert_eq!((a.content_type.as_str(), a.size), ("image/jpeg", 0));
        assert!(matches!(from_image_url("data:image/png;base64,AAAA"), Err(MediaError::Refused(_))));
        assert!(matches!(from_image_url("https://media.example.com/u/blob"), Err(MediaError::Refused(_))));
        assert!(matches!(from_file_part("DATA:image/png;base64,AA", "image/png", None), Err(MediaError::Refused(_))));
        let f = from_file_part("https://media.example.com/u/x", "image/png", Some("x.png")).unwrap();
        assert_eq!(on().check(&[f]).unwrap()[0].name.as_deref(), Some("x.png"));
    }

    #[test]
    fn prefixes_must_end_in_a_slash() {
        let s = MediaSettings { url_prefixes: vec!["https://media.example.com".into()], ..Default::default() };
        assert!(s.validate().is_err());
        assert!(on().validate().is_ok());
    }

    #[test]
    fn types_an_upstream_does_not_take_become_text() {
        let mut m = ChatMessage::new(Role::User, "what is this?");
        m.attachments = vec![att("https://media.example.com/u/a.png", "image/png", 7)];
        let seen = for_upstream(std::slice::from_ref(&m), &["image/png".into()]);
        assert_eq!(seen[0], m);
        let seen = for_upstream(&[m], &[]);
        assert!(seen[0].attachments.is_empty());
        assert_eq!(
            seen[0].text,
            "what is this?\n[attachment cat.png (image/png, 7 bytes): https://media.example.com/u/a.png]"
        );
    }
}
