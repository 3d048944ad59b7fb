//! Reading the archive: a user's conversations and messages (the conversations API), one user's
//! export, and what a restore puts back into Redis. Every query names the tenant and the owner,
//! so no id reaches another user's or another tenant's rows.

use serde::Serialize;
use sqlx::Row;

use super::{Archive, ArchiveError};
use crate::payload::{HistoryMessage, VERSION};

/// A conversation as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub title: String,
    /// `first_message` or `user` (see the migration).
    pub title_source: String,
    pub created_ms: i64,
    pub last_activity_ms: i64,
    pub message_count: i64,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    pub turn_id: String,
    pub text: String,
    /// For an answer: `done`, `error` or `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When the turn was sent (user) or ended (assistant), Redis server time in ms.
    pub at_ms: i64,
    /// A user message's media references.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::payload::Attachment>,
}

/// A page of messages, oldest first, and the cursor of the page before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// Pass as `before` for older messages; absent on the first page of the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// What a restore needs: the newest archived messages and the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Restorable {
    /// Oldest first, at most the history cap.
    pub history: Vec<HistoryMessage>,
    /// (turn id it covers up to, text).
    pub summary: Option<(String, String)>,
}

const SESSION_COLUMNS: &str = "session_id, title, title_source, created_ms, last_activity_ms, message_count";

fn session_info(r: &sqlx::postgres::PgRow) -> SessionInfo {
    SessionInfo {
        id: r.get("session_id"),
        title: r.get("title"),
        title_source: r.get("title_source"),
        created_ms: r.get("created_ms"),
        last_activity_ms: r.get("last_activity_ms"),
        message_count: r.get("message_count"),
    }
}

/// A row's `attachments` (JSON text, NULL when the message had none). Rows are written by the
/// archiver from checked references, so a value that does not parse is dropped, not fatal.
fn attachments(r: &sqlx::postgres::PgRow) -> Vec<crate::payload::Attachment> {
    r.get::<Option<String>, _>("attachments").and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default()
}

/// The messages of turn rows (user, then the answer when stored), in the rows' order.
fn messages(rows: &[sqlx::postgres::PgRow]) -> Vec<Message> {
    let mut out = Vec::with_capacity(rows.len() * 2);
    for r in rows {
        let turn_id: String = r.get("turn_id");
        out.push(Message {
            role: "user".into(),
            turn_id: turn_id.clone(),
            text: r.get("user_text"),
            status: None,
            at_ms: r.get("created_ms"),
            attachments: attachments(r),
        });
        if let Some(text) = r.get::<Option<String>, _>("assistant_text") {
            out.push(Message {
                role: "assistant".into(),
                turn_id,
                text,
                status: Some(r.get("outcome")),
                at_ms: r.get("finished_ms"),
                attachments: Vec::new(),
            });
        }
    }
    out
}

impl Archive {
    /// `user`'s conversations, newest activity first, after the cursor `(last_activity_ms, id)`
    /// of the previous page.
    pub async fn list_sessions(
        &self,
        tenant: &str,
        user: &str,
        limit: u32,
        after: Option<(i64, String)>,
    ) -> Result<Vec<SessionInfo>, ArchiveError> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND user_id = $2 \
             AND (last_activity_ms, session_id) < ($3, $4) \
             ORDER BY last_activity_ms DESC, session_id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(user)
        .bind(at)
        // With no cursor, every id sorts below the sentinel time, whatever the id.
        .bind(if at == i64::MAX { "\u{10FFFF}".to_string() } else { id })
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(session_info).collect())
    }

    /// One conversation of `user`, if they own it.
    pub async fn session(
        &self,
        tenant: &str,
        user: &str,
        session_id: &str,
    ) -> Result<Option<SessionInfo>, ArchiveError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND user_id = $2 AND session_id = $3"
        ))
        .bind(tenant)
        .bind(user)
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(session_info))
    }

    /// A page of up to `limit` turns' messages of `user`'s conversation, the newest turns before
    /// turn `before` (or the newest), oldest first. `None` when `user` owns no such session.
    pub async fn messages(
        &self,
        tenant: &str,
        user: &str,
        session_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Option<MessagePage>, ArchiveError> {
        if self.session(tenant, user, session_id).await?.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT turn_id, user_text, user_attachments::text AS attachments, assistant_text, outcome, created_ms, \
             finished_ms FROM turns t \
             WHERE tenant = $1 AND session_id = $2 AND ($3::text IS NULL OR (created_ms, turn_id) < \
             (SELECT created_ms, turn_id FROM turns WHERE turn_id = $3 AND tenant = $1 AND session_id = $2)) \
             ORDER BY created_ms DESC, turn_id DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(session_id)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let mut rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        rows.reverse();
        let before = more.then(|| rows.first().map(|r| r.get::<String, _>("turn_id"))).flatten();
        Ok(Some(MessagePage { messages: messages(&rows), before }))
    }

    /// The newest `max_messages` messages and the summary of `user`'s conversation, for a
    /// restore into Redis. `None` when `user` owns no such session (or it has no turns).
    pub async fn restorable(
        &self,
        tenant: &str,
        user: &str,
        session_id: &str,
        max_messages: u64,
    ) -> Result<Option<Restorable>, ArchiveError> {
        let Some(s) = sqlx::query(
            "SELECT summary_upto, summary_text FROM sessions WHERE tenant = $1 AND user_id = $2 AND session_id = $3",
        )
        .bind(tenant)
        .bind(user)
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        // A turn holds at most two messages: this many turns cover the cap.
        let rows = sqlx::query(
            "SELECT turn_id, user_text, user_attachments::text AS attachments, assistant_text, outcome, created_ms, \
             finished_ms FROM turns \
             WHERE tenant = $1 AND session_id = $2 ORDER BY created_ms DESC, turn_id DESC LIMIT $3",
        )
        .bind(tenant)
        .bind(session_id)
        .bind(max_messages as i64)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let rows: Vec<_> = rows.into_iter().rev().collect();
        let all = messages(&rows);
        let skip = all.len().saturating_sub(max_messages as usize);
        let history = all
            .into_iter()
            .skip(skip)
            .map(|m| HistoryMessage {
                v: VERSION,
                role: m.role,
                turn_id: m.turn_id,
                text: m.text,
                status: m.status,
                attachments: m.attachments,
            })
            .collect();
        let upto: Option<String> = s.get("summary_upto");
        let text: Option<String> = s.get("summary_text");
        Ok(Some(Restorable { history, summary: upto.zip(text) }))
    }

    /// Every conversation of `user` with its messages, oldest turn first, up to `max_turns`
    /// turns in all; the flag says the export was cut there.
    pub async fn export(
        &self,
        tenant: &str,
        user: &str,
        max_turns: u32,
    ) -> Result<(Vec<(SessionInfo, Vec<Message>)>, bool), ArchiveError> {
        let sessions = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND user_id = $2 ORDER BY created_ms, session_id"
        ))
        .bind(tenant)
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT t.session_id, turn_id, user_text, user_attachments::text AS attachments, assistant_text, outcome, \
             t.created_ms, finished_ms \
             FROM turns t JOIN sessions s USING (tenant, session_id) WHERE s.tenant = $1 AND s.user_id = $2 \
             ORDER BY t.session_id, t.created_ms, turn_id LIMIT $3",
        )
        .bind(tenant)
        .bind(user)
        .bind(i64::from(max_turns) + 1)
        .fetch_all(&self.pool)
        .await?;
        let truncated = rows.len() > max_turns as usize;
        let mut by_session: std::collections::HashMap<String, Vec<sqlx::postgres::PgRow>> = Default::default();
        for r in rows.into_iter().take(max_turns as usize) {
            by_session.entry(r.get("session_id")).or_default().push(r);
        }
        let out = sessions
            .iter()
            .map(|r| {
                let info = session_info(r);
                let msgs = by_session.get(&info.id).map(|rows| messages(rows)).unwrap_or_default();
                (info, msgs)
            })
            .collect();
        Ok((out, truncated))
    }

    /// Rows left for a conversation (any owner): (sessions, turns). For erasure checks.
    pub async fn rows_of(&self, tenant: &str, session_id: &str) -> Result<(i64, i64), ArchiveError> {
        let r = sqlx::query(
            "SELECT (SELECT count(*) FROM sessions WHERE tenant = $1 AND session_id = $2) AS s, \
             (SELECT count(*) FROM turns WHERE tenant = $1 AND session_id = $2) AS t",
        )
        .bind(tenant)
        .bind(session_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.get("s"), r.get("t")))
    }
}
