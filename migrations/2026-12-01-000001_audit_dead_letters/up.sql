-- Events PostgreSQL refused to store (say, a string jsonb cannot hold), so
-- that one such event never holds back the audit of every other session.
-- The event is kept as the bytes it was committed with (BYTEA: whatever made
-- the row unstorable cannot make this one unstorable), with Postgres' reason.
CREATE TABLE audit_dead_letters (
    id           BIGSERIAL   PRIMARY KEY,
    tenant       TEXT        NOT NULL,
    session_id   TEXT        NOT NULL,
    epoch        TEXT        NOT NULL,
    version      BIGINT      NOT NULL,
    reason       TEXT        NOT NULL,
    event        BYTEA       NOT NULL,
    refused_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_dead_letters_by_session ON audit_dead_letters (tenant, session_id);
