-- /api/handlers: each handler's pending, running and dead deliveries, counted with the oldest's
-- age, from this index alone; succeeded deliveries (most of the table) are not in it.
CREATE INDEX deliveries_backlog ON deliveries (status, handler, created_at)
    WHERE status IN ('pending', 'running', 'dead');

-- Alerts hookline raises about itself: occurrences of each subject (a handler's dead letters, a
-- breaker, a source, the workers) add up here until the subject's quiet period has passed, then
-- one event reports them all with their count. Kept in the store, so several workers share
-- one quiet period per subject.
CREATE TABLE alerts (
    subject   TEXT    PRIMARY KEY,
    type      TEXT    NOT NULL,
    pending   BIGINT NOT NULL DEFAULT 0,
    first_at  DOUBLE PRECISION,
    last_at   DOUBLE PRECISION,
    sent_at   DOUBLE PRECISION,
    data      TEXT    NOT NULL DEFAULT '{}'
);
-- How far the dead-letter check has read the finished attempts (attempts.done_seq).
CREATE TABLE alert_cursors (
    name      TEXT    PRIMARY KEY,
    position  BIGINT NOT NULL
);
