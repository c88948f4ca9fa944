-- What the read API needs: an order in which attempts ended (the live tail resumes from it),
-- attempts by end time (stats), and per-minute counts of requests that stored no event.
ALTER TABLE attempts ADD COLUMN done_seq INTEGER;
CREATE INDEX attempts_done ON attempts (done_seq);
CREATE INDEX attempts_ended ON attempts (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE ingest_counts (
    minute   INTEGER NOT NULL,
    source   TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    reason   TEXT    NOT NULL DEFAULT '',
    count    INTEGER NOT NULL,
    PRIMARY KEY (minute, source, outcome, reason)
);
