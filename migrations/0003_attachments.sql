-- Media by reference (docs/protocol.md, "Attachments"): a user message may carry references
-- (URL, content type, size, name) to media the product stores itself. The archive keeps the
-- references with the turn, as JSON, so a restored conversation still shows and sends them.
-- NULL for a message without attachments.
ALTER TABLE turns ADD COLUMN user_attachments jsonb;
