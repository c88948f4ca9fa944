-- The event log, the deliveries each event fans out to, and the attempts of each delivery.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    source       TEXT    NOT NULL,
    type         TEXT    NOT NULL CHECK (type <> ''),
    dedupe_key   TEXT,
    status       TEXT    NOT NULL CHECK (status IN ('unrouted', 'pending', 'delivered', 'failed')),
    received_at  REAL    NOT NULL,
    occurred_at  REAL,
    job_id       TEXT,
    file_id      TEXT,
    company_id   TEXT,
    task_ids     TEXT    NOT NULL DEFAULT '[]',
    handlers     TEXT    NOT NULL DEFAULT '[]',
    headers      TEXT    NOT NULL,
    query        TEXT    NOT NULL DEFAULT '',
    payload      TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_source ON events (source, seq);
CREATE INDEX events_status ON events (status, seq);
CREATE INDEX events_job ON events (job_id, seq) WHERE job_id IS NOT NULL;
CREATE INDEX events_file ON events (file_id, seq) WHERE file_id IS NOT NULL;
CREATE INDEX events_received ON events (received_at);

CREATE TABLE deliveries (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    event_id          TEXT    NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler           TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'dead')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL,
    lease_owner       TEXT,
    lease_expires_at  REAL,
    created_at        REAL    NOT NULL,
    updated_at        REAL    NOT NULL,
    last_error        TEXT
);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, seq);
CREATE INDEX deliveries_handler ON deliveries (handler, seq);
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at) WHERE status = 'running';

-- An event and its deliveries are one statement: every inserted event fans out to the
-- handlers its routes chose (events.handlers), so neither can exist without the other.
CREATE TRIGGER events_fan_out AFTER INSERT ON events WHEN NEW.handlers <> '[]'
BEGIN
    INSERT INTO deliveries (id, event_id, handler, status, attempts, next_attempt_at,
                            created_at, updated_at)
    SELECT printf('dlv_%012x', CAST(NEW.received_at * 1000 AS INTEGER) & 281474976710655)
               || lower(hex(randomblob(10))),
           NEW.id, value, 'pending', 0, NEW.received_at, NEW.received_at, NEW.received_at
    FROM json_each(NEW.handlers);
END;

CREATE TABLE attempts (
    delivery_id  TEXT    NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    ended_at     REAL,
    outcome      TEXT    NOT NULL,
    error        TEXT,
    http_status  INTEGER,
    PRIMARY KEY (delivery_id, number)
);
