-- A claim (a running delivery's attempts going up by one) opens the new attempt's row, and
-- marks an earlier attempt still open lost, within the claim's own UPDATE: a claim then costs
-- one statement instead of three.
CREATE TRIGGER deliveries_claimed AFTER UPDATE OF attempts ON deliveries
WHEN NEW.status = 'running' AND NEW.attempts = OLD.attempts + 1
BEGIN
    UPDATE attempts SET outcome = 'lost', ended_at = NEW.updated_at, error = 'lease expired'
    WHERE delivery_id = NEW.id AND outcome = 'running';
    INSERT INTO attempts (delivery_id, number, started_at, outcome)
    VALUES (NEW.id, NEW.attempts, NEW.updated_at, 'running');
END;
