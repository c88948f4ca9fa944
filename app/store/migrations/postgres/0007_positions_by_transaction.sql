-- Positions without a global lock. An event's position (seq) and a finished attempt's (done_seq)
-- start with the id of the transaction that wrote it (shifted left by 20 bits; the low bits are
-- a sequence's, unique within a transaction), so every later transaction writes above it. A
-- reader takes positions only below the oldest transaction still writing the table (see
-- _HORIZONS in postgres.py): nothing can appear below a position it has read, and writers no
-- longer wait for each other's commits.
DROP TRIGGER events_in_commit_order ON events;
DROP FUNCTION hookline_events_in_commit_order();
ALTER TABLE events ALTER COLUMN seq SET DEFAULT
    (pg_current_xact_id()::text::bigint << 20) + (nextval('events_seq_seq') & 1048575);
