ALTER TABLE session_events
    DROP COLUMN lag_asked_us,
    DROP COLUMN lag_given_us;
