-- Attempts past their deadline: a consumer lease that passed (the Scheduler fails it shortly), or
-- a node task running longer than its timeout (its node should have killed it).
CREATE OR REPLACE VIEW long_task.expired AS
    SELECT r.*, coalesce(r.lease_until, r.started + make_interval(secs => r.timeout)) AS deadline
      FROM long_task.running r
     WHERE (r.lease_until IS NOT NULL AND r.lease_until <= now())
        OR (r.lease_until IS NULL AND r.timeout IS NOT NULL
            AND r.started + make_interval(secs => r.timeout) <= now());
