DROP TABLE sessions;
DROP TABLE session_events;
