-- Upstream bookkeeping: retry budgets, one-time marks, and status polls of upstream work.
CREATE TABLE budgets (
    key         TEXT    PRIMARY KEY,
    used        INTEGER NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE marks (
    key         TEXT    PRIMARY KEY,
    created_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE polls (
    id                TEXT    PRIMARY KEY,
    handler           TEXT    NOT NULL,
    kind              TEXT    NOT NULL,
    key               TEXT    NOT NULL,
    data              TEXT    NOT NULL,
    event_id          TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('waiting', 'running', 'done')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_at           DOUBLE PRECISION NOT NULL,
    deadline          DOUBLE PRECISION NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  DOUBLE PRECISION,
    outcome           TEXT,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL
);
CREATE INDEX polls_due ON polls (next_at) WHERE status = 'waiting';
CREATE INDEX polls_leases ON polls (lease_expires_at) WHERE status = 'running';
CREATE INDEX polls_key ON polls (key);
