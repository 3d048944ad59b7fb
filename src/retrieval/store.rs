//! Knowledge collections in PostgreSQL (`migrations/0002_knowledge.sql`): documents, their
//! chunks, and full-text search over them.
//!
//! Every statement is scoped by tenant and collection, so a tenant can only ever reach its own
//! documents. Search looks for the question's stemmed words that are rare enough to tell chunks
//! apart (a question never holds every word of the answer, so not all of them are required; see
//! [`Knowledge::search`]) and ranks by cover density (`ts_rank_cd`), with a title match weighing
//! more than a body match.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::pack::Hit;

/// Distinct words of a question that make its queries (pairs grow as the square).
const MAX_QUERY_WORDS: i64 = 12;
/// The rarest words of a question kept however common they are (pairs need two; a third keeps
/// a question of common words specific).
const MIN_QUERY_WORDS: i64 = 3;

/// `$1` tenant, `$2` collection, `$3` question, `$4` limit, `$5` most candidates, `$6` most
/// words, `$7` the share of chunks past which a word is too common, `$8` words kept anyway.
///
/// `ql`: the question's distinct stemmed words (stop words dropped). `fx`: each word's share of
/// chunks holding it, from the planner's statistics of the search vectors (`pg_stats`
/// `most_common_elems` and their frequencies, table-wide, kept by `ANALYZE`: up to 10 × the
/// statistics target lexemes; a word not listed is rarer than all listed ones, and with no
/// statistics every share is 0), unnested once and joined (a lookup per word re-read the array,
/// 0.8 ms each). `lx`: the words at most `$7` common,
/// and at least the `$8` rarest. A common word costs most where it helps least: its posting list
/// is long (the index scan), and its pairs match many chunks (the candidates to rank).
///
/// `q.pairs` matches a chunk holding any two of the words, `q.one` any one. Candidates: chunks
/// holding two words (`strong`), else chunks holding one (`weak`), at most `$5`; `ts_rank` (term
/// frequency, ~9 µs a 100-word chunk) picks 4 × `$4` finalists, which `ts_rank_cd` (cover
/// density: words close together rank higher, ~40-70 µs a chunk) orders.
pub const SEARCH: &str = "\
WITH ql AS (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $3)) LIMIT $6), \
fx AS (SELECT ql.lexeme, coalesce(m.f, 0) AS share FROM ql LEFT JOIN (SELECT m.e, m.f FROM pg_stats, \
      unnest(most_common_elems::text::text[], most_common_elem_freqs) AS m(e, f) \
    WHERE schemaname = current_schema() AND tablename = 'knowledge_chunks' AND attname = 'tsv') m \
    ON m.e = ql.lexeme), \
lx AS (SELECT lexeme FROM fx ORDER BY share, lexeme \
    LIMIT greatest($8, (SELECT count(*) FROM fx WHERE share <= $7))), \
q AS (SELECT \
    (SELECT knowledge_any(plainto_tsquery('simple', a.lexeme) && plainto_tsquery('simple', b.lexeme)) \
       FROM lx a JOIN lx b ON a.lexeme < b.lexeme) AS pairs, \
    (SELECT knowledge_any(plainto_tsquery('simple', lexeme)) FROM lx) AS one), \
strong AS (SELECT c.doc_id, c.chunk, c.title, c.body, c.tsv, ts_rank(c.tsv, q.one) AS r \
    FROM (SELECT c.* FROM knowledge_chunks c, q \
          WHERE c.tenant = $1 AND c.collection = $2 AND c.tsv @@ q.pairs LIMIT $5) c, q \
    ORDER BY r DESC LIMIT $4 * 4), \
weak AS (SELECT c.doc_id, c.chunk, c.title, c.body, c.tsv, ts_rank(c.tsv, q.one) AS r \
    FROM (SELECT c.* FROM knowledge_chunks c, q \
          WHERE c.tenant = $1 AND c.collection = $2 AND c.tsv @@ q.one AND NOT EXISTS (SELECT 1 FROM strong) \
          LIMIT $5) c, q \
    ORDER BY r DESC LIMIT $4 * 4) \
SELECT p.doc_id, p.chunk, p.title, p.body, ts_rank_cd(p.tsv, q.one) AS rank \
FROM (SELECT * FROM strong UNION ALL SELECT * FROM weak) p, q \
ORDER BY rank DESC, p.doc_id, p.chunk LIMIT $4";

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocumentInfo {
    pub id: String,
    pub title: String,
    pub bytes: i64,
    pub chunks: i32,
    pub updated_ms: i64,
}

/// Why a document was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the collection already holds {0} documents")]
    Full(u64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The knowledge tables behind the archive's pool. Cheap to clone.
#[derive(Clone)]
pub struct Knowledge {
    pool: PgPool,
}

impl Knowledge {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a document with its chunks, replacing any earlier version of the same id (its old
    /// chunks go): one transaction, so a search sees the old version or the new, never a mix.
    /// True when the document is new. `max_documents` bounds the collection.
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
        title: &str,
        bytes: usize,
        chunks: &[String],
        now_ms: i64,
        max_documents: u64,
    ) -> Result<bool, PutError> {
        let mut tx = self.pool.begin().await?;
        let inserted: bool = sqlx::query(
            "INSERT INTO knowledge_documents (tenant, collection, doc_id, title, bytes, chunks, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, collection, doc_id) DO UPDATE \
             SET title = EXCLUDED.title, bytes = EXCLUDED.bytes, chunks = EXCLUDED.chunks, \
                 updated_ms = EXCLUDED.updated_ms \
             RETURNING (xmax = 0)",
        )
        .bind(tenant)
        .bind(collection)
        .bind(id)
        .bind(title)
        .bind(bytes as i64)
        .bind(chunks.len() as i32)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if inserted {
            let count: i64 =
                sqlx::query("SELECT count(*) FROM knowledge_documents WHERE tenant = $1 AND collection = $2")
                    .bind(tenant)
                    .bind(collection)
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
            if count as u64 > max_documents {
                return Err(PutError::Full(max_documents));
            }
        }
        sqlx::query("DELETE FROM knowledge_chunks WHERE tenant = $1 AND collection = $2 AND doc_id = $3")
            .bind(tenant)
            .bind(collection)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO knowledge_chunks (tenant, collection, doc_id, chunk, title, body) \
             SELECT $1, $2, $3, (n - 1)::int, $4, body FROM unnest($5::text[]) WITH ORDINALITY AS c(body, n)",
        )
        .bind(tenant)
        .bind(collection)
        .bind(id)
        .bind(title)
        .bind(chunks)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// A page of a collection's documents by id, after `after`.
    pub async fn list(
        &self,
        tenant: &str,
        collection: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Vec<DocumentInfo>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT doc_id, title, bytes, chunks, updated_ms FROM knowledge_documents \
             WHERE tenant = $1 AND collection = $2 AND doc_id > $3 ORDER BY doc_id LIMIT $4",
        )
        .bind(tenant)
        .bind(collection)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DocumentInfo {
                id: r.get(0),
                title: r.get(1),
                bytes: r.get(2),
                chunks: r.get(3),
                updated_ms: r.get(4),
            })
            .collect())
    }

    /// Deletes a document and its chunks. False when there was none.
    pub async fn delete(&self, tenant: &str, collection: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM knowledge_documents WHERE tenant = $1 AND collection = $2 AND doc_id = $3")
            .bind(tenant)
            .bind(collection)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The `limit` best chunks of the collection for `query`, best first.
    ///
    /// Words in more than `retrieval.common_word_share` of the chunks are left out (but the
    /// `MIN_QUERY_WORDS` rarest are kept): they match too much to tell chunks apart. Ranking
    /// reads every candidate's search vector, so the candidates are bounded: the chunks that hold
    /// at least two of the remaining words (an OR of every pair, which the GIN index answers),
    /// or only when none does, the chunks holding one; at most `retrieval.max_candidates` (an
    /// arbitrary subset past it). A cheap rank (`ts_rank`) keeps four finalists per result and
    /// `ts_rank_cd` orders the best `retrieval.top_k` (see [`SEARCH`]). A question's first
    /// `MAX_QUERY_WORDS` distinct words are used.
    pub async fn search(
        &self,
        tenant: &str,
        collection: &str,
        query: &str,
        s: &super::RetrievalSettings,
    ) -> Result<Vec<Hit>, sqlx::Error> {
        let rows = sqlx::query(SEARCH)
            .bind(tenant)
            .bind(collection)
            .bind(query)
            .bind(i64::from(s.top_k))
            .bind(i64::from(s.max_candidates))
            .bind(MAX_QUERY_WORDS)
            .bind(s.common_word_share)
            .bind(MIN_QUERY_WORDS)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Hit {
                document: r.get(0),
                chunk: r.get::<i32, _>(1) as u32,
                title: r.get(2),
                text: r.get(3),
                rank: r.get(4),
            })
            .collect())
    }
}
