-- Claims per handler (a worker asks each handler's due deliveries only up to that handler's free
-- slots): each handler's due deliveries and expired leases in due order, without scanning the
-- other handlers' backlog or this handler's finished history.
CREATE INDEX deliveries_handler_due ON deliveries (handler, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_handler_leases ON deliveries (handler, lease_expires_at) WHERE status = 'running';
