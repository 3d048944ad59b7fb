//! Writing the archive: a batch of finished turns in one transaction, and erasure.
//!
//! Idempotent: a turn's row is keyed by its id and inserted with `ON CONFLICT DO NOTHING`, and a
//! session's counters move only for rows actually inserted, so a redelivered batch (an archiver
//! died between commit and ack) changes nothing. Each batch and each erasure take a transaction
//! advisory lock per session, so an erasure and a batch holding a turn of the same session run
//! one after the other: the erasure's tombstone then keeps a late turn out.

use sqlx::Row;

use super::{first_title, Archive, ArchiveError};
use crate::store::FinishedTurn;

/// What one batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Turns inserted (the rest were already archived or belong to erased sessions).
    pub inserted: u64,
}

/// Locks each `tenant:session` of the transaction, in one order (no deadlock between batches).
const LOCK_SESSIONS: &str = "SELECT pg_advisory_xact_lock(h) FROM \
    (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY 1) AS s";

/// The batch as rows; reused by every statement of [`Archive::write_batch`].
const INPUT: &str = "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
    $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[], $12::text[], \
    $13::text[], $14::text[], $15::int8[], $16::int8[], $17::text[], $18::text[], $19::text[], $20::text[]) AS t(turn_id, \
    tenant, session_id, user_id, user_text, assistant_text, outcome, error_code, error_message, prompt_tokens, \
    completion_tokens, upstream, model, template, created_ms, finished_ms, title, summary_upto, summary_text, \
    user_attachments)), \
    live AS (SELECT * FROM input i WHERE NOT EXISTS (SELECT 1 FROM erasures e WHERE e.tenant = i.tenant \
    AND e.session_id = i.session_id AND e.erased_ms >= i.finished_ms)) ";

const INSERT_SESSIONS: &str = "INSERT INTO sessions (tenant, session_id, user_id, title, created_ms, \
    last_activity_ms) SELECT DISTINCT ON (tenant, session_id) tenant, session_id, coalesce(user_id, ''), title, \
    created_ms, created_ms FROM live ORDER BY tenant, session_id, created_ms \
    ON CONFLICT (tenant, session_id) DO UPDATE SET user_id = EXCLUDED.user_id \
    WHERE sessions.user_id = '' AND EXCLUDED.user_id <> ''";

const INSERT_TURNS: &str = "ins AS (INSERT INTO turns (turn_id, tenant, session_id, user_id, user_text, \
    assistant_text, outcome, error_code, error_message, prompt_tokens, completion_tokens, upstream, model, \
    template, created_ms, finished_ms, user_attachments) SELECT turn_id, tenant, session_id, user_id, user_text, \
    assistant_text, outcome, error_code, error_message, prompt_tokens, completion_tokens, upstream, model, template, \
    created_ms, finished_ms, user_attachments::jsonb FROM live ON CONFLICT (turn_id) DO NOTHING \
    RETURNING tenant, session_id, assistant_text IS NOT NULL AS answered, finished_ms), \
    agg AS (SELECT tenant, session_id, sum(1 + answered::int) AS n, max(finished_ms) AS last, count(*) AS turns \
    FROM ins GROUP BY tenant, session_id), \
    upd AS (UPDATE sessions s SET message_count = s.message_count + agg.n, \
    last_activity_ms = GREATEST(s.last_activity_ms, agg.last) FROM agg \
    WHERE s.tenant = agg.tenant AND s.session_id = agg.session_id RETURNING agg.turns) \
    SELECT coalesce(sum(turns), 0)::int8 AS inserted FROM upd";

/// The newest summary of each session of the batch, when newer than the stored one (summaries
/// cover up to a turn id, and turn ids are time-ordered UUIDv7).
const UPDATE_SUMMARIES: &str = "UPDATE sessions s SET summary_upto = l.summary_upto, summary_text = \
    l.summary_text FROM (SELECT DISTINCT ON (tenant, session_id) tenant, session_id, summary_upto, summary_text \
    FROM live WHERE summary_upto IS NOT NULL ORDER BY tenant, session_id, summary_upto DESC) AS l \
    WHERE s.tenant = l.tenant AND s.session_id = l.session_id \
    AND (s.summary_upto IS NULL OR s.summary_upto < l.summary_upto)";

/// The batch as columns (one array per field), bound to each statement.
struct Batch {
    text: [Vec<String>; 11],
    opt: [Vec<Option<String>>; 5],
    num: [Vec<i64>; 4],
}

impl Batch {
    fn new(turns: &[FinishedTurn], title_words: usize) -> Self {
        let text = |f: fn(&FinishedTurn) -> String| turns.iter().map(f).collect::<Vec<_>>();
        let opt = |f: fn(&FinishedTurn) -> Option<String>| turns.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&FinishedTurn) -> i64| turns.iter().map(f).collect::<Vec<_>>();
        Self {
            text: [
                text(|t| t.turn_id.clone()),
                text(|t| t.tenant.clone()),
                text(|t| t.session_id.clone()),
                text(|t| t.user_text.clone()),
                text(|t| t.outcome.clone()),
                text(|t| t.error_code.clone()),
                text(|t| t.error_message.clone()),
                text(|t| t.upstream.clone()),
                text(|t| t.model.clone()),
                text(|t| t.template.clone()),
                turns.iter().map(|t| first_title(&t.user_text, title_words)).collect(),
            ],
            opt: [
                opt(|t| t.user_id.clone()),
                opt(|t| t.assistant_text.clone()),
                opt(|t| t.summary.as_ref().map(|s| s.0.clone())),
                opt(|t| t.summary.as_ref().map(|s| s.1.clone())),
                // JSON, or NULL for a message without attachments (most of them).
                opt(|t| (!t.attachments.is_empty()).then(|| serde_json::to_string(&t.attachments).unwrap_or_default())),
            ],
            num: [
                num(|t| t.prompt_tokens),
                num(|t| t.completion_tokens),
                num(|t| t.created_ms),
                num(|t| t.finished_ms),
            ],
        }
    }

    /// `sql` (which starts with [`INPUT`]) with the columns bound as $1..$20.
    fn bind<'q>(&self, sql: &'q str) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let [turn_id, tenant, session_id, user_text, outcome, error_code, error_message, upstream, model, template, title] =
            self.text.clone();
        let [user_id, assistant_text, summary_upto, summary_text, user_attachments] = self.opt.clone();
        let [prompt_tokens, completion_tokens, created_ms, finished_ms] = self.num.clone();
        sqlx::query(sql)
            .bind(turn_id)
            .bind(tenant)
            .bind(session_id)
            .bind(user_id)
            .bind(user_text)
            .bind(assistant_text)
            .bind(outcome)
            .bind(error_code)
            .bind(error_message)
            .bind(prompt_tokens)
            .bind(completion_tokens)
            .bind(upstream)
            .bind(model)
            .bind(template)
            .bind(created_ms)
            .bind(finished_ms)
            .bind(title)
            .bind(summary_upto)
            .bind(summary_text)
            .bind(user_attachments)
    }
}

impl Archive {
    /// Archives `turns` in one transaction.
    pub async fn write_batch(&self, turns: &[FinishedTurn]) -> Result<Written, ArchiveError> {
        if turns.is_empty() {
            return Ok(Written::default());
        }
        let batch = Batch::new(turns, self.settings.title_words);
        let mut tx = self.pool.begin().await?;
        let sessions: Vec<String> = turns.iter().map(|t| format!("{}:{}", t.tenant, t.session_id)).collect();
        sqlx::query(LOCK_SESSIONS).bind(sessions).execute(&mut *tx).await?;
        let (sessions_sql, turns_sql, summaries_sql) = (
            format!("{INPUT}{INSERT_SESSIONS}"),
            format!("{INPUT}, {INSERT_TURNS}"),
            format!("{INPUT}{UPDATE_SUMMARIES}"),
        );
        batch.bind(&sessions_sql).execute(&mut *tx).await?;
        let inserted: i64 = batch.bind(&turns_sql).fetch_one(&mut *tx).await?.get("inserted");
        batch.bind(&summaries_sql).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Written { inserted: inserted as u64 })
    }

    /// Deletes a conversation's rows and records its erasure at `at_ms` (Redis server time), so
    /// turns of it still in flight to the archive are refused. Returns the turns deleted.
    pub async fn erase(&self, tenant: &str, session_id: &str, at_ms: i64) -> Result<u64, ArchiveError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_SESSIONS).bind(vec![format!("{tenant}:{session_id}")]).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO erasures (tenant, session_id, erased_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, session_id) DO UPDATE SET erased_ms = GREATEST(erasures.erased_ms, $3)",
        )
        .bind(tenant)
        .bind(session_id)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        let turns = sqlx::query("DELETE FROM turns WHERE tenant = $1 AND session_id = $2")
            .bind(tenant)
            .bind(session_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM sessions WHERE tenant = $1 AND session_id = $2")
            .bind(tenant)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(turns)
    }

    /// Sets a conversation's title (its owner asked). False when `user` owns no such session.
    pub async fn set_title(
        &self,
        tenant: &str,
        user: &str,
        session_id: &str,
        title: &str,
    ) -> Result<bool, ArchiveError> {
        let r = sqlx::query(
            "UPDATE sessions SET title = $4, title_source = 'user' \
             WHERE tenant = $1 AND user_id = $2 AND session_id = $3",
        )
        .bind(tenant)
        .bind(user)
        .bind(session_id)
        .bind(title)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
