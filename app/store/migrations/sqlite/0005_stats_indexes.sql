-- /api/stats counts events by type, status and source, and attempts by outcome, over a time
-- window: indexes that hold those columns answer from the index without reading the rows.
DROP INDEX events_received;
CREATE INDEX events_received ON events (received_at, type, status, source);
DROP INDEX attempts_ended;
CREATE INDEX attempts_ended ON attempts (ended_at, outcome, delivery_id) WHERE ended_at IS NOT NULL;
