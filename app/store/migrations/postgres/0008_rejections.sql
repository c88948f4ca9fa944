-- The rejections log: refused webhook requests with their reasons, bounded by a retention and
-- a row cap (both applied by the maintenance ticks). Listed newest first by time.
CREATE TABLE rejections (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    received_at     DOUBLE PRECISION NOT NULL,
    source          TEXT    NOT NULL,
    known           BOOLEAN NOT NULL,
    status          INTEGER NOT NULL,
    code            TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    details         JSONB   NOT NULL,
    remote          TEXT,
    headers         JSONB   NOT NULL,
    body            BYTEA,
    body_bytes      INTEGER,
    truncated       BOOLEAN NOT NULL DEFAULT false,
    dropped_before  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX rejections_time ON rejections (received_at, seq);
CREATE INDEX rejections_source ON rejections (source, received_at);
CREATE INDEX rejections_code ON rejections (code, received_at);
