-- Takes up to n waiting consumer tasks (a topic, no command) whose topic matches the SQL LIKE
-- pattern (NULL: any), of one group (NULL: any), with FOR UPDATE SKIP LOCKED: two consumers never
-- get the same task. Each gets a lease of its timeout (else the group's lease, else 60 s: the rule
-- of long_task.lease_seconds, inlined); an unacknowledged lease is expired by the Scheduler
-- (long_task.expire_leases). The worker_id of a consumed task is minus the consumer's backend pid.
-- The tasks are picked first: a consume that finds nothing (a polling consumer) writes nothing
-- and fires no statement trigger. PL/pgSQL, so its statements are planned once per session.
CREATE OR REPLACE FUNCTION long_task.consume_topic(p_pattern text, n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE plpgsql AS $$
DECLARE
    picked bigint[];
BEGIN
    SELECT array_agg(p.id ORDER BY p.priority, p.last_state_change, p.id) INTO picked
      FROM (SELECT t.id, t.priority, t.last_state_change
              FROM long_task.task t
             WHERE t.state_id = 'AW' AND t.command IS NULL AND t.topic IS NOT NULL
               AND (p_pattern IS NULL OR t.topic LIKE p_pattern)
               AND (p_group_id IS NULL OR t.group_id = p_group_id)
               AND t.worker_id IS NULL
               AND (t.run_after IS NULL OR t.run_after <= now())
               AND (t.depends_on IS NULL OR NOT EXISTS (
                       SELECT 1 FROM long_task.task d WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS'))
             ORDER BY t.priority, t.last_state_change, t.id
             LIMIT n
               FOR UPDATE SKIP LOCKED) p;
    IF picked IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH upd AS (
        UPDATE long_task.task t
           SET state_id = 'AE', worker_id = -pg_backend_pid(), run_id = gen_random_uuid(),
               attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL,
               -- the task's timeout, else the group's lease, else 60 s (long_task.lease_seconds)
               lease_until = now() + make_interval(secs => coalesce(
                   t.timeout,
                   (SELECT s.lease FROM long_task.group_settings s WHERE s.group_id = t.group_id),
                   60)),
               error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL,
               result = NULL
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.run_id, t.topic, t.params, t.attempt, t.max_attempts, t.lease_until, t.group_id
    )
    SELECT u.id, u.run_id, u.topic, u.params, u.attempt, u.max_attempts, u.lease_until, u.group_id
      FROM upd u JOIN unnest(picked) WITH ORDINALITY AS o(id, ord) ON o.id = u.id
     ORDER BY o.ord;
END
$$;
