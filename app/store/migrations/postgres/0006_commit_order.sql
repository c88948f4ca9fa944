-- Events take their positions (seq) in commit order. Every statement inserting events first
-- takes one transaction-level advisory lock, held until it commits, and only then draws its
-- positions; with several receivers, positions would otherwise commit out of order, and a live
-- tail that has read up to position N could still see a lower position appear later. Finished
-- attempts (done_seq) are ordered the same way by the store, under a lock of their own.
CREATE FUNCTION hookline_events_in_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7264155002);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_in_commit_order BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_events_in_commit_order();
