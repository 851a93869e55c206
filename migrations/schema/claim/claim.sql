-- Claims up to n runnable tasks of a group for a node: waiting, not pinned elsewhere, run_after
-- reached, every dependency CS; process tasks when p_commands (a task with a command, or with
-- neither command nor topic), and topic tasks whose topic is in p_topics (the node's handlers).
-- Each claimed task gets a new run_id (the fencing token of this attempt) and attempt + 1.
-- The candidates come off the ready ring (long_task.take_ready), in claim order (priority, then
-- first in first out); each is claimed only if its task row still waits as its entry says (the
-- row decides), so a stale entry is dropped and the next one taken; a group's concurrency and
-- rate limits bound what is taken (long_task.take_limited). A paused group
-- (group_settings.paused) gets nothing, and so does a node whose stop code is set (worker.stop
-- <> 0), even before the node heard of it; a claim holds ns_hand_over shared for its node, so it
-- never runs beside a hand-over of that node (long_task.hand_over_node).
-- Each row also says how to start the process: the task's env, the group's run_as user, and
-- each resource limit of the task, else of its group (NULL: none from the database; the node's
-- own config bounds all three).
-- SET enable_seqscan = off, jit = off: PL/pgSQL plans its statements once per session and keeps
-- them; planned while long_task.task was small (a fresh database, a node started on an empty
-- queue), a lookup of rows by id would stay a scan of the whole table, once per call, however
-- large the table grew. Off, the plan takes the indexes at any size (and a plan costed past
-- jit_above_cost by the disabled paths is not JIT-compiled at every call).
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer,
                                           p_topics text[], p_commands boolean)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision,
               attempt integer, topic text, params jsonb, max_attempts integer, env jsonb,
               run_as text, limit_memory bigint, limit_cpu_seconds bigint, limit_open_files bigint,
               limit_processes bigint)
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off AS $$
DECLARE
    want integer := n;
    ids bigint[];
    lscs timestamptz[];
    keys text[];
    got integer;
    plan_mode text := current_setting('plan_cache_mode');
    g long_task.group_settings%ROWTYPE;
BEGIN
    -- a pause waits for this claim, and this claim for a pause being committed (ns_pause)
    PERFORM pg_advisory_xact_lock_shared(long_task.ns_pause(), p_group_id);
    SELECT * INTO g FROM long_task.group_settings s WHERE s.group_id = p_group_id;
    -- a paused group starts nothing (long_task.pause_group); its ring entries stay for later
    IF coalesce(g.paused, false) THEN
        RETURN;
    END IF;
    -- a node told to stop claiming gets nothing: its Dispatcher hears of the stop code through
    -- its Membership, after the 'wake' of the tasks a hand-over re-queued
    PERFORM pg_advisory_xact_lock_shared(long_task.ns_hand_over(), (p_worker_id % 2147483647)::integer);
    IF EXISTS (SELECT 1 FROM long_task.worker w WHERE w.id = p_worker_id AND w.stop <> 0) THEN
        RETURN;
    END IF;
    -- a node's write: the statement trigger skips what only a person's write can cause
    PERFORM set_config('long_task.node_write', 'on', true);
    WHILE want > 0 LOOP
        SELECT array_agg(r.task_id), array_agg(r.lsc), array_agg(r.concurrency_key) INTO ids, lscs, keys
          FROM long_task.take_limited(want, p_group_id, p_worker_id, p_topics, p_commands, NULL) r;
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
               AND x.group_id = p_group_id
               AND (x.worker_id IS NULL OR x.worker_id = p_worker_id)
               AND ((p_commands AND (x.command IS NOT NULL OR x.topic IS NULL)) OR x.topic = ANY (p_topics))
               -- clock_timestamp(), not now(): an entry exists only for a run_after reached when it was
               -- written, by a transaction that may have begun after this one (a task queued with
               -- run_after = now() while this claim ran); now() would drop its entry, unclaimed, and
               -- nothing would write another
               AND (x.run_after IS NULL OR x.run_after <= clock_timestamp())
               AND (x.depends_on IS NULL OR NOT EXISTS (
                       SELECT 1 FROM long_task.task d WHERE d.id = ANY (x.depends_on) AND d.state_id <> 'CS'))
        ), upd AS (
            UPDATE long_task.task t
               SET state_id = 'AE', worker_id = p_worker_id, run_id = gen_random_uuid(),
                   attempt = t.attempt + 1, started = clock_timestamp(), finished = NULL, run_after = NULL,
                   lease_until = NULL, error = NULL, exit_code = NULL, exit_signal = NULL,
                   stdout_tail = NULL, stderr_tail = NULL, result = NULL
             WHERE t.id = ANY (ARRAY(SELECT c.id FROM cand c))
            RETURNING t.id, t.run_id, t.command, t.cwd, t.timeout, t.attempt, t.topic, t.params, t.max_attempts,
                      t.env, t.limit_memory, t.limit_cpu_seconds, t.limit_open_files, t.limit_processes
        )
        SELECT u.id, u.run_id, u.command, u.cwd, u.timeout, u.attempt, u.topic, u.params, u.max_attempts,
               u.env, g.run_as, coalesce(u.limit_memory, g.limit_memory),
               coalesce(u.limit_cpu_seconds, g.limit_cpu_seconds),
               coalesce(u.limit_open_files, g.limit_open_files),
               coalesce(u.limit_processes, g.limit_processes)
          FROM upd u
         ORDER BY array_position(ids, u.id);
        GET DIAGNOSTICS got = ROW_COUNT;
        PERFORM set_config('plan_cache_mode', plan_mode, true);
        -- the ring had no more for us
        EXIT WHEN cardinality(ids) < want;
        want := want - got;
    END LOOP;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;

-- The claim of process tasks only (the reference interface's form, kept for SQL callers).
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision, attempt integer)
LANGUAGE sql AS $$
    SELECT c.id, c.run_id, c.command, c.cwd, c.timeout, c.attempt
      FROM long_task.claim(p_worker_id, p_group_id, n, '{}'::text[], true) c
$$;
