-- The chatfleet archive: conversations that outlive Redis (docs/architecture.md, "Archive").
--
-- Redis holds a session's live state for session.ttl_secs; every finished turn is also appended
-- to its partition's archive stream, and archivers copy it here in batches, off the turn's path.
-- Times are Redis server milliseconds (the clock that stamped the turn), as bigint.

-- One row per conversation, keyed like Redis: (tenant, session id). Owned by the user of its
-- first archived turn; the conversations API shows a session to its owner only.
CREATE TABLE sessions (
    tenant           text   NOT NULL,
    session_id       text   NOT NULL,
    user_id          text   NOT NULL,
    -- 'first_message': the first words of the first message (set on insert); 'user': set with
    -- PATCH /v1/sessions/{id} and never overwritten. A model-made title would be a third source
    -- ('model'), written by a job after the first turn where title_source = 'first_message'.
    title            text   NOT NULL,
    title_source     text   NOT NULL DEFAULT 'first_message',
    created_ms       bigint NOT NULL,
    last_activity_ms bigint NOT NULL,
    -- Messages archived (a turn adds its user message, and its answer when one was stored).
    message_count    bigint NOT NULL DEFAULT 0,
    -- The session's summary of older history when its latest turn was archived (restores put it
    -- back, so context packing sees the whole conversation).
    summary_upto     text,
    summary_text     text,
    PRIMARY KEY (tenant, session_id)
);

-- GET /v1/sessions: a user's conversations, newest first, paged by (last activity, id).
CREATE INDEX sessions_by_owner ON sessions (tenant, user_id, last_activity_ms DESC, session_id DESC);
-- Retention: conversations idle for archive.retention_days.
CREATE INDEX sessions_by_activity ON sessions (last_activity_ms);

-- One row per finished turn, keyed by its id (UUIDv7, unique across tenants): a redelivered
-- stream entry finds its row and changes nothing, so a crash between commit and ack never
-- doubles a turn.
CREATE TABLE turns (
    turn_id           text   PRIMARY KEY,
    tenant            text   NOT NULL,
    session_id        text   NOT NULL,
    -- The sender, when the gateway knew it (turns enqueued with the archive on).
    user_id           text,
    user_text         text   NOT NULL,
    -- NULL when no answer was stored (cancelled before any text).
    assistant_text    text,
    -- done | error | cancelled
    outcome           text   NOT NULL,
    error_code        text   NOT NULL DEFAULT '',
    error_message     text   NOT NULL DEFAULT '',
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    -- Audit: who answered and with which prompt template version.
    upstream          text   NOT NULL DEFAULT '',
    model             text   NOT NULL DEFAULT '',
    template          text   NOT NULL DEFAULT '',
    created_ms        bigint NOT NULL,
    finished_ms       bigint NOT NULL,
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, session_id) ON DELETE CASCADE
);

-- A conversation's messages in order (a session runs one turn at a time), paged backwards.
CREATE INDEX turns_by_session ON turns (tenant, session_id, created_ms, turn_id);

-- Erased conversations. A turn of the session that finished before the erasure may still be in
-- the archive stream (delivered to an archiver before the erasure): the archiver refuses turns
-- that finished at or before erased_ms, so an erased conversation never comes back. Kept for
-- archive.retention_days (or 30 days when retention is off), far longer than any backlog.
CREATE TABLE erasures (
    tenant     text   NOT NULL,
    session_id text   NOT NULL,
    erased_ms  bigint NOT NULL,
    PRIMARY KEY (tenant, session_id)
);
