-- A SWITCHED event of a session with lag compensation: the lag the mover
-- reported and the compensation it was given (taken off its turn's time),
-- in microseconds as every duration of the snapshot. NULL for every other
-- event. Nullable columns with no default: adding them rewrites nothing.
ALTER TABLE session_events
    ADD COLUMN lag_asked_us BIGINT,
    ADD COLUMN lag_given_us BIGINT;
