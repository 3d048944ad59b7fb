-- Knowledge collections for retrieval (docs/architecture.md, "Retrieval"; src/retrieval).
--
-- Documents are ingested through the gateway's knowledge API, cut into chunks (src/retrieval/
-- chunk.rs) and indexed for full-text search. A turn whose session a `[[retrieval.rules]]` rule
-- matches gets the best chunks of its tenant's collection in its prompt. Every query is scoped by
-- (tenant, collection): a tenant never reaches another's documents. Times are milliseconds.

-- One row per document; re-ingesting the same id replaces it (and its chunks) in one transaction.
CREATE TABLE knowledge_documents (
    tenant     text    NOT NULL,
    collection text    NOT NULL,
    doc_id     text    NOT NULL,
    title      text    NOT NULL DEFAULT '',
    -- Size of the ingested text, and how many chunks it made.
    bytes      bigint  NOT NULL,
    chunks     integer NOT NULL,
    updated_ms bigint  NOT NULL,
    PRIMARY KEY (tenant, collection, doc_id)
);

-- The searchable pieces. The title is copied onto each chunk so the generated search vector can
-- weigh a title match (A) above a body match (B). The text search configuration is fixed
-- ('english': stemming, stop words) because a generated column's expression must be immutable.
CREATE TABLE knowledge_chunks (
    tenant     text    NOT NULL,
    collection text    NOT NULL,
    doc_id     text    NOT NULL,
    chunk      integer NOT NULL,
    title      text    NOT NULL DEFAULT '',
    body       text    NOT NULL,
    tsv        tsvector GENERATED ALWAYS AS (
                   setweight(to_tsvector('english'::regconfig, title), 'A') ||
                   setweight(to_tsvector('english'::regconfig, body), 'B')
               ) STORED,
    PRIMARY KEY (tenant, collection, doc_id, chunk),
    FOREIGN KEY (tenant, collection, doc_id)
        REFERENCES knowledge_documents (tenant, collection, doc_id) ON DELETE CASCADE
);

-- Full-text matches (`tsv @@ query`); the tenant and collection filter the matches. No fast
-- update: a search would otherwise scan the index's pending list of recent inserts linearly
-- until a vacuum merged it (tens of ms after a bulk ingest); ingest pays instead.
CREATE INDEX knowledge_chunks_tsv ON knowledge_chunks USING GIN (tsv) WITH (fastupdate = off);

-- OR of tsqueries as an aggregate (`||` over rows), to build a search's queries from the words of
-- a question in one statement (src/retrieval/store.rs, `search`).
CREATE AGGREGATE knowledge_any (tsquery) (SFUNC = tsquery_or, STYPE = tsquery);
