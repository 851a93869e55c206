-- Takes up to n waiting consumer tasks (a topic, no command) whose topic matches the SQL LIKE
-- pattern (NULL: any), of one group (NULL: any): two consumers never get the same task. Each gets
-- a lease of its timeout (else the group's lease, else 60 s: the rule of long_task.lease_seconds,
-- inlined); an unacknowledged lease is expired by the Scheduler (long_task.expire_leases). The
-- worker_id of a consumed task is minus the consumer's backend pid. The candidates come off the
-- ready ring like a node's claim (long_task.take_ready, the task row decides); a consume that
-- finds nothing writes nothing to long_task.task and fires no statement trigger.
-- A login role limited by long_task.group_access consumes from its groups only: a group it may
-- not use is refused (42501), and NULL means each of its groups in turn. A paused group
-- (group_settings.paused) gives nothing; while any group is paused or limited, NULL means each
-- group with ready entries that is not paused, in turn. A group's concurrency and rate limits
-- bound what is taken (long_task.take_limited).
-- SET enable_seqscan = off, jit = off: PL/pgSQL plans its statements once per session and keeps
-- them; planned while long_task.task was small (a fresh database, a node started on an empty
-- queue), a lookup of rows by id would stay a scan of the whole table, once per call, however
-- large the table grew. Off, the plan takes the indexes at any size (and a plan costed past
-- jit_above_cost by the disabled paths is not JIT-compiled at every call).
CREATE OR REPLACE FUNCTION long_task.consume_topic(p_pattern text, n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off AS $$
DECLARE
    want integer := n;
    ids bigint[];
    lscs timestamptz[];
    keys text[];
    got integer;
    plan_mode text := current_setting('plan_cache_mode');
    allowed integer[] := long_task.accessible_groups(session_user);
    g integer;
    groups integer[];
BEGIN
    IF p_group_id IS NOT NULL THEN
        IF allowed IS NOT NULL THEN
            PERFORM long_task.check_group_access(p_group_id, session_user);
        END IF;
        PERFORM pg_advisory_xact_lock_shared(long_task.ns_pause(), p_group_id);
        IF EXISTS (SELECT 1 FROM long_task.group_settings s WHERE s.group_id = p_group_id AND s.paused) THEN
            RETURN;
        END IF;
    ELSIF allowed IS NOT NULL OR EXISTS (SELECT 1 FROM long_task.group_settings s WHERE s.paused)
          OR long_task.limits_configured() THEN
        -- the ring would hand out entries of groups the role may not use, that are paused or
        -- whose limits bind: take group by group instead (each call checks its group as above).
        -- The groups with entries on the ring are found by skipping from one group to the next
        -- on its index (a probe per group, not a read of every entry), and listed before the
        -- first call (an open query on the ring would keep a rotation from emptying a slot).
        groups := coalesce(allowed, ARRAY(
            WITH RECURSIVE rg(g) AS (
                (SELECT r.group_id FROM long_task.ready r ORDER BY r.group_id LIMIT 1)
                UNION ALL
                SELECT (SELECT r.group_id FROM long_task.ready r WHERE r.group_id > rg.g
                         ORDER BY r.group_id LIMIT 1)
                  FROM rg WHERE rg.g IS NOT NULL)
            SELECT rg.g FROM rg WHERE rg.g IS NOT NULL));
        groups := ARRAY(SELECT x.g FROM unnest(groups) x(g)
                         WHERE NOT EXISTS (SELECT 1 FROM long_task.group_settings s WHERE s.group_id = x.g AND s.paused)
                         ORDER BY 1);
        FOREACH g IN ARRAY groups LOOP
            EXIT WHEN want <= 0;
            RETURN QUERY SELECT * FROM long_task.consume_topic(p_pattern, want, g);
            GET DIAGNOSTICS got = ROW_COUNT;
            want := want - got;
        END LOOP;
        RETURN;
    END IF;
    -- a claim like a node's: the statement trigger skips what only a person's write can cause
    PERFORM set_config('long_task.node_write', 'on', true);
    WHILE want > 0 LOOP
        SELECT array_agg(r.task_id), array_agg(r.lsc), array_agg(r.concurrency_key) INTO ids, lscs, keys
          FROM long_task.take_limited(want, p_group_id, NULL, NULL, NULL, p_pattern) r;
        EXIT WHEN ids IS NULL;
        -- a generic plan, made once per session: a custom plan for each claim's arrays would
        -- cost more to make than the statement costs to run (its shape never changes)
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
        RETURN QUERY
        WITH cand AS MATERIALIZED (
            -- each candidate's row by primary key, locked, its state tested outside the lookup
            -- (inside, the planner would read the partial indexes of waiting rows instead)
            SELECT x.id
              FROM unnest(ids, lscs, keys) AS e(id, lsc, key)
             CROSS JOIN LATERAL (
                    SELECT t.id, t.state_id, t.last_state_change, t.group_id, t.worker_id, t.command,
                           t.topic, t.run_after, t.depends_on, t.concurrency_key
                      FROM long_task.task t WHERE t.id = e.id
                       FOR UPDATE LIMIT 1) x
             WHERE x.state_id = 'AW' AND x.last_state_change = e.lsc
               AND x.concurrency_key IS NOT DISTINCT FROM e.key
               AND x.command IS NULL AND x.topic IS NOT NULL AND x.worker_id IS NULL
               AND (p_pattern IS NULL OR x.topic LIKE p_pattern)
               AND (p_group_id IS NULL OR x.group_id = p_group_id)
               -- clock_timestamp(), not now(): see long_task.claim (an entry written by a transaction
               -- that began after this one must not be dropped unclaimed)
               AND (x.run_after IS NULL OR x.run_after <= clock_timestamp())
               AND (x.depends_on IS NULL OR NOT EXISTS (
                       SELECT 1 FROM long_task.task d WHERE d.id = ANY (x.depends_on) AND d.state_id <> 'CS'))
        ), upd AS (
            UPDATE long_task.task t
               SET state_id = 'AE', worker_id = -pg_backend_pid(), run_id = gen_random_uuid(),
                   attempt = t.attempt + 1, started = clock_timestamp(), finished = NULL, run_after = NULL,
                   -- the task's timeout, else the group's lease, else 60 s (long_task.lease_seconds)
                   lease_until = now() + make_interval(secs => coalesce(
                       t.timeout,
                       (SELECT s.lease FROM long_task.group_settings s WHERE s.group_id = t.group_id),
                       60)),
                   error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL,
                   stderr_tail = NULL, result = NULL
             WHERE t.id = ANY (ARRAY(SELECT c.id FROM cand c))
            RETURNING t.id, t.run_id, t.topic, t.params, t.attempt, t.max_attempts, t.lease_until, t.group_id
        )
        SELECT u.id, u.run_id, u.topic, u.params, u.attempt, u.max_attempts, u.lease_until, u.group_id
          FROM upd u
         ORDER BY array_position(ids, u.id);
        GET DIAGNOSTICS got = ROW_COUNT;
        PERFORM set_config('plan_cache_mode', plan_mode, true);
        EXIT WHEN cardinality(ids) < want;
        want := want - got;
    END LOOP;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;
