-- Every committed version of every session (SPEC §8), with its full snapshot.
-- The key carries the epoch as well as the version: a session deleted and
-- created again under the same id starts again at version 1, and its history
-- must not collide with (and be dropped against) the old one's.
CREATE TABLE session_events (
    tenant          TEXT        NOT NULL,
    session_id      TEXT        NOT NULL,
    epoch           TEXT        NOT NULL,
    version         BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    participant_id  TEXT,
    occurred_at     TIMESTAMPTZ NOT NULL,
    snapshot        JSONB       NOT NULL,
    -- When the writer stored it: inserted_at - occurred_at is the audit lag.
    inserted_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant, session_id, epoch, version)
);
-- "Everything that happened in this time range" (disputes across sessions).
CREATE INDEX session_events_by_time ON session_events (occurred_at);

-- One row per session id: its configuration and where it stands.
CREATE TABLE sessions (
    tenant        TEXT        NOT NULL,
    session_id    TEXT        NOT NULL,
    epoch         TEXT        NOT NULL,
    mode          TEXT        NOT NULL,
    status        TEXT        NOT NULL,
    last_version  BIGINT      NOT NULL,
    config        JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    ended_at      TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL,
    deleted_at    TIMESTAMPTZ,
    PRIMARY KEY (tenant, session_id)
);
-- "Sessions created in a time range", per tenant.
CREATE INDEX sessions_by_created_at ON sessions (tenant, created_at);
