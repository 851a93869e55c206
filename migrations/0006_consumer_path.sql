-- pgtaskd schema, version 6: a cheaper consumer path (publish, consume, ack). Same behaviour, same
-- errors, same notifications; less PostgreSQL work per task.
--
--   * task_before_write looks nothing up on the way through: a legal transition only leads to a
--     known state, so the task_state table is read only to word the error of a rejected write
--     (version 1 queried it for every row written: 56 of the trigger's 62 µs per row). A
--     schedule period is checked when it is set, not on every write of a scheduled task.
--   * consume_topic and consume are PL/pgSQL: their statements are planned once per session
--     (PostgreSQL 15 plans the body of a SQL function on every call: about 1 ms, which was most of
--     the cost of a consume that finds nothing), and the lease is looked up once per row in
--     group_settings instead of through a SQL function call per row; a consume that finds
--     nothing writes nothing.
--   * the state code is checked by a CHECK constraint instead of a foreign key to task_state
--     (whose check took a KEY SHARE row lock on task_state for every state change).

-- ---------------------------------------------------------------------------------------------
-- BEFORE ROW trigger
-- ---------------------------------------------------------------------------------------------

-- Raises the error for a task state code that a write may not set: unknown (no such row in
-- long_task.task_state), not a start state (p_from NULL: an insert) or not reachable from p_from.
CREATE FUNCTION long_task.reject_task_state(p_to char(2), p_from char(2), p_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    allowed char(2)[] := long_task.legal_next_states(p_from);
BEGIN
    IF p_to IS NULL OR NOT EXISTS (SELECT 1 FROM long_task.task_state s WHERE s.id = p_to) THEN
        RAISE EXCEPTION 'unknown task state %', quote_nullable(p_to)
            USING ERRCODE = 'check_violation',
                  HINT = 'known states: DR draft, AW waiting, AE executing, AC cancel requested, '
                      || 'CS succeeded, CF failed, CC cancelled';
    END IF;
    IF p_from IS NULL THEN
        RAISE EXCEPTION 'a new task must start in state DR or AW, not %', p_to
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'illegal task state transition % -> % for task %', p_from, p_to, p_id
        USING ERRCODE = 'check_violation',
              HINT = format('from %s a task may go to: %s', p_from, array_to_string(allowed, ', '));
END
$$;

-- Raises the error for a schedule period code with no row in long_task.period.
CREATE FUNCTION long_task.check_period(p_period char(3)) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM long_task.period p WHERE p.id = p_period) THEN
        RAISE EXCEPTION 'unknown schedule period %', quote_nullable(p_period)
            USING ERRCODE = 'check_violation', HINT = 'known periods: SEC, MIN, HOU, DAY, WEE, MON';
    END IF;
END
$$;

-- Version 1's task_before_write, same effects: the checks above run only where they can fail.
CREATE OR REPLACE FUNCTION long_task.task_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state_id IS NULL OR NEW.state_id NOT IN ('DR', 'AW') THEN
            PERFORM long_task.reject_task_state(NEW.state_id, NULL, NULL);
        END IF;
        IF NEW.shed_period_id IS NOT NULL THEN
            PERFORM long_task.check_period(NEW.shed_period_id);
        END IF;
        NEW.last_state_change := now();
        -- a worker_id given by a person pins the task to that node
        NEW.pinned := NEW.worker_id IS NOT NULL;
        RETURN NEW;
    END IF;

    -- Pinning: a worker_id set by a person (not by a node's claim or a node's own write) pins the
    -- task; the node that merely ran a task last does not.
    IF NEW.worker_id IS DISTINCT FROM OLD.worker_id AND NEW.state_id IS DISTINCT FROM 'AE'
       AND coalesce(current_setting('long_task.node_write', true), '') <> 'on' THEN
        NEW.pinned := NEW.worker_id IS NOT NULL;
    END IF;

    IF NEW.state_id IS DISTINCT FROM OLD.state_id THEN
        IF NEW.state_id IS NULL OR NOT NEW.state_id = ANY (long_task.legal_next_states(OLD.state_id)) THEN
            PERFORM long_task.reject_task_state(NEW.state_id, OLD.state_id, OLD.id);
        END IF;
        NEW.last_state_change := now();

        -- A cancel of a task that is not running ends at once: there is no process to kill.
        IF NEW.state_id = 'AC' AND OLD.state_id = 'AW' THEN
            NEW.state_id := 'CC';
            NEW.error := coalesce(NEW.error, 'cancelled before start');
        END IF;

        IF NEW.state_id = 'AW' THEN
            -- Queued (again): any node of the group may take it unless it is pinned, and a new
            -- attempt starts from a clean outcome.
            IF NOT NEW.pinned THEN
                NEW.worker_id := NULL;
            END IF;
            NEW.run_id := NULL;
            IF OLD.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
                NEW.attempt := 0;
                NEW.error := NULL;
                NEW.exit_code := NULL;
                NEW.exit_signal := NULL;
                NEW.stdout_tail := NULL;
                NEW.stderr_tail := NULL;
                NEW.started := NULL;
                NEW.finished := NULL;
            END IF;
        ELSIF NEW.state_id = 'AE' THEN
            IF NEW.run_id IS NULL OR NEW.worker_id IS NULL THEN
                RAISE EXCEPTION 'task % can only enter AE through a node''s claim (run_id and worker_id set)', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
        ELSIF NEW.state_id IN ('CS', 'CF', 'CC') THEN
            NEW.finished := coalesce(NEW.finished, now());
        END IF;
    END IF;
    IF NEW.shed_period_id IS DISTINCT FROM OLD.shed_period_id AND NEW.shed_period_id IS NOT NULL THEN
        PERFORM long_task.check_period(NEW.shed_period_id);
    END IF;
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Consuming
-- ---------------------------------------------------------------------------------------------

-- Version 5's consume_topic (same signature, same rows, same locks), planned once per session.
-- The tasks are picked first: a consume that finds nothing (a polling consumer) writes nothing
-- and fires no statement trigger.
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

CREATE OR REPLACE FUNCTION long_task.consume(n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM long_task.consume_topic(NULL, n, p_group_id);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- State codes: a CHECK constraint instead of the foreign key
-- ---------------------------------------------------------------------------------------------

-- The foreign key made every state change run a lookup of long_task.task_state that takes a
-- KEY SHARE row lock (a multixact when concurrent writers set the same state). task_before_write
-- already rejects unknown codes with a clear error; the constraint keeps them out even of writes
-- that bypass triggers (session_replication_role = replica), which the foreign key did not.
ALTER TABLE long_task.task DROP CONSTRAINT task_state_id_fkey;
ALTER TABLE long_task.task ADD CONSTRAINT task_state_id_known
    CHECK (state_id IN ('DR', 'AW', 'AE', 'AC', 'CS', 'CF', 'CC'));
