-- /api/handlers: each handler's pending, running and dead deliveries, counted with the oldest's
-- age, from this index alone; succeeded deliveries (most of the table) are not in it.
CREATE INDEX deliveries_backlog ON deliveries (status, handler, created_at)
    WHERE status IN ('pending', 'running', 'dead');
