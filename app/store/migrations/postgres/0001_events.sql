-- The event log, the deliveries each event fans out to, and the attempts of each delivery.
CREATE TABLE events (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT      NOT NULL UNIQUE,
    source       TEXT      NOT NULL,
    type         TEXT      NOT NULL CHECK (type <> ''),
    dedupe_key   TEXT,
    status       TEXT      NOT NULL CHECK (status IN ('unrouted', 'pending', 'delivered', 'failed')),
    received_at  DOUBLE PRECISION NOT NULL,
    occurred_at  DOUBLE PRECISION,
    job_id       TEXT,
    file_id      TEXT,
    company_id   TEXT,
    task_ids     JSONB     NOT NULL DEFAULT '[]',
    handlers     JSONB     NOT NULL DEFAULT '[]',
    headers      JSONB     NOT NULL,
    query        TEXT      NOT NULL DEFAULT '',
    payload      JSONB     NOT NULL,
    body         BYTEA     NOT NULL,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_source ON events (source, seq);
CREATE INDEX events_status ON events (status, seq);
CREATE INDEX events_job ON events (job_id, seq) WHERE job_id IS NOT NULL;
CREATE INDEX events_file ON events (file_id, seq) WHERE file_id IS NOT NULL;
CREATE INDEX events_received ON events (received_at);

CREATE TABLE deliveries (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT      NOT NULL UNIQUE,
    event_id          TEXT      NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler           TEXT      NOT NULL,
    status            TEXT      NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'dead')),
    attempts          INTEGER   NOT NULL DEFAULT 0,
    next_attempt_at   DOUBLE PRECISION,
    lease_owner       TEXT,
    lease_expires_at  DOUBLE PRECISION,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    last_error        TEXT
);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, seq);
CREATE INDEX deliveries_handler ON deliveries (handler, seq);
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at) WHERE status = 'running';

CREATE TABLE attempts (
    delivery_id  TEXT      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number       INTEGER   NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    outcome      TEXT      NOT NULL,
    error        TEXT,
    http_status  INTEGER,
    PRIMARY KEY (delivery_id, number)
);

-- Workers on other machines wake when deliveries are added (plus their periodic sweep).
CREATE FUNCTION hookline_notify_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookline_deliveries', '');
    RETURN NULL;
END $$;
CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_notify_deliveries();
