-- pgtaskd schema, version 5: a cheaper write path. Same behaviour, same notifications; less
-- PostgreSQL work per task claimed and finished.
--
--   * claim: the picked rows are updated through the primary key. The join of version 2 was
--     planned with LIMIT n unknown (10 % of the waiting rows), so the planner hashed a sequential
--     scan of the whole task table on every claim of a small table.
--   * consume_topic: the same rewrite as claim (it had the same join).
--   * complete_runs: each outcome's row is looked up (and locked) through the primary key, and the
--     history insert takes the old values from the update's RETURNING. Version 2 joined the
--     update and the history insert to a CTE the planner estimated at one row: two nested loops
--     over the whole batch, quadratic in the batch size (2,000 outcomes took ~2 s).
--   * the AFTER triggers: one statement trigger per event instead of two or three, one PL/pgSQL
--     call and one scan of the transition tables for all notifications of a statement.
--   * narrow BEFORE ROW triggers get WHEN clauses, so PL/pgSQL is not entered for rows they leave
--     alone (a WHEN of a BEFORE trigger sees NEW as changed by the triggers before it: name order).

-- ---------------------------------------------------------------------------------------------
-- Claiming
-- ---------------------------------------------------------------------------------------------

-- Version 2's claim (same signature, same rows): the update goes through the primary key, and
-- the claimed tasks are returned in claim order (priority, then first in first out).
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer,
                                           p_topics text[], p_commands boolean)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision,
               attempt integer, topic text, params jsonb, max_attempts integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- a node's write: the statement trigger skips what only a person's write can cause
    PERFORM set_config('long_task.node_write', 'on', true);
    RETURN QUERY
    WITH picked AS (
        SELECT t.id, t.priority, t.last_state_change
          FROM long_task.task t
         WHERE t.state_id = 'AW' AND t.group_id = p_group_id
           AND (t.worker_id IS NULL OR t.worker_id = p_worker_id)
           AND (t.run_after IS NULL OR t.run_after <= now())
           AND ((p_commands AND (t.command IS NOT NULL OR t.topic IS NULL)) OR t.topic = ANY (p_topics))
           AND (t.depends_on IS NULL OR NOT EXISTS (
                   SELECT 1 FROM long_task.task d WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS'))
         ORDER BY t.priority, t.last_state_change, t.id
         LIMIT n
           FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = 'AE', worker_id = p_worker_id, run_id = gen_random_uuid(),
               attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL, lease_until = NULL,
               error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL,
               result = NULL
         WHERE t.id = ANY (ARRAY(SELECT p.id FROM picked p))
        RETURNING t.id, t.run_id, t.command, t.cwd, t.timeout, t.attempt, t.topic, t.params, t.max_attempts
    )
    SELECT u.id, u.run_id, u.command, u.cwd, u.timeout, u.attempt, u.topic, u.params, u.max_attempts
      FROM upd u JOIN picked p ON p.id = u.id
     ORDER BY p.priority, p.last_state_change, p.id;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;

-- Version 2's consume_topic (same signature, same rows): the update goes through the primary
-- key, like claim above.
CREATE OR REPLACE FUNCTION long_task.consume_topic(p_pattern text, n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE sql AS $$
    WITH picked AS (
        SELECT t.id, t.priority, t.last_state_change
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
           FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = 'AE', worker_id = -pg_backend_pid(), run_id = gen_random_uuid(),
               attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL,
               lease_until = now() + make_interval(secs => long_task.lease_seconds(t.group_id, t.timeout)),
               error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL,
               result = NULL
         WHERE t.id = ANY (ARRAY(SELECT p.id FROM picked p))
        RETURNING t.id, t.run_id, t.topic, t.params, t.attempt, t.max_attempts, t.lease_until, t.group_id
    )
    SELECT u.id, u.run_id, u.topic, u.params, u.attempt, u.max_attempts, u.lease_until, u.group_id
      FROM upd u JOIN picked p ON p.id = u.id
     ORDER BY p.priority, p.last_state_change, p.id
$$;

-- ---------------------------------------------------------------------------------------------
-- Ending attempts
-- ---------------------------------------------------------------------------------------------

-- Version 2's complete_runs (same signature, same effects): each outcome's task is looked up
-- through the primary key and locked (FOR UPDATE: it is then ours until the end of the
-- transaction, and a concurrent cancel is seen, so the update needs no state test of its own),
-- and the history rows take the attempt's old values from the update's RETURNING.
CREATE OR REPLACE FUNCTION long_task.complete_runs(
    p_ids bigint[], p_run_ids uuid[], p_states text[], p_errors text[],
    p_exit_codes integer[], p_exit_signals integer[], p_stdout text[], p_stderr text[],
    p_results jsonb[], p_retry_at timestamptz[])
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('long_task.node_write', 'on', true);
    RETURN QUERY
    WITH o AS MATERIALIZED (
        SELECT u.*, old.worker_id AS old_worker_id, old.started AS old_started, old.attempt AS old_attempt
          FROM unnest(p_ids, p_run_ids, p_states, p_errors, p_exit_codes, p_exit_signals, p_stdout, p_stderr,
                      p_results, p_retry_at)
               AS u(id, run_id, state, error, exit_code, exit_signal, stdout_tail, stderr_tail, result, retry_at)
         CROSS JOIN LATERAL (
                -- the state is tested outside (LIMIT keeps it there): inside, it would steer the
                -- lookup to the partial index of running rows, scanned whole for each outcome
                SELECT x.worker_id, x.started, x.attempt, x.state_id
                  FROM long_task.task x
                 WHERE x.id = u.id AND x.run_id = u.run_id
                   FOR UPDATE
                 LIMIT 1) old
         WHERE old.state_id IN ('AE', 'AC')
    ), upd AS (
        -- no test of t.state_id here: the planner would size t by it (a handful of running rows
        -- in stale statistics) and loop over the whole batch for each of them
        UPDATE long_task.task t
           SET state_id = CASE WHEN t.state_id = 'AC' THEN 'CC'
                               WHEN o.state = 'CF' AND t.attempt < t.max_attempts THEN 'AW'
                               ELSE o.state END,
               run_after = CASE WHEN t.state_id <> 'AC' AND o.state = 'CF' AND t.attempt < t.max_attempts
                                THEN coalesce(o.retry_at,
                                              now() + make_interval(secs => long_task.retry_delay(
                                                  t.group_id, t.attempt, t.retry_base, t.retry_max, t.retry_jitter)))
                           END,
               error = CASE WHEN t.state_id = 'AC' AND o.state <> 'CC' THEN 'cancelled' ELSE o.error END,
               exit_code = o.exit_code, exit_signal = o.exit_signal,
               stdout_tail = o.stdout_tail, stderr_tail = o.stderr_tail,
               result = o.result, lease_until = NULL, finished = now()
          FROM o
         WHERE t.id = o.id AND t.run_id = o.run_id
        RETURNING t.id, t.group_id, t.state_id, t.run_after, t.error, t.exit_code, t.exit_signal,
                  t.stdout_tail, t.stderr_tail, t.result, t.finished,
                  o.run_id AS old_run_id, o.old_attempt, o.old_worker_id, o.old_started
    ), hist AS (
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        exit_code, exit_signal, stdout_tail, stderr_tail, result,
                                        started, finished, retry_at)
        SELECT upd.id, upd.group_id, upd.old_run_id, upd.old_attempt, upd.old_worker_id,
               CASE WHEN upd.state_id = 'AW' THEN 'CF' ELSE upd.state_id END, upd.error,
               upd.exit_code, upd.exit_signal, upd.stdout_tail, upd.stderr_tail, upd.result,
               upd.old_started, upd.finished, CASE WHEN upd.state_id = 'AW' THEN upd.run_after END
          FROM upd
    )
    SELECT upd.id, upd.state_id FROM upd;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- AFTER statement triggers: one per event
-- ---------------------------------------------------------------------------------------------

-- Versions 1 and 2's task_notify, task_notify_timers and task_deps_after in one function, with
-- the same effects in the same order: the dependency work first (its cascade fires this trigger
-- again for the dependents), then one notification per group and kind:
--   wake   tasks became runnable (AW)
--   ctl    a running task was cancelled, deleted, reassigned or finished by someone else
--   sched  a schedule was set, changed or removed, or a retry delay or lease deadline was set
-- A node's own writes (long_task.node_write) send no ctl and no schedule 'sched'.
CREATE FUNCTION long_task.task_after_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    node_write boolean := coalesce(current_setting('long_task.node_write', true), '') = 'on';
    done bigint[];
    failed bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN
            SELECT DISTINCT n.group_id, k.kind
              FROM new_rows n
             CROSS JOIN LATERAL (VALUES
                   ('wake', n.state_id = 'AW'),
                   ('sched', n.next_start IS NOT NULL),
                   ('sched', (n.state_id = 'AW' AND n.run_after > now()) OR n.lease_until IS NOT NULL)
                 ) k(kind, hit)
             WHERE k.hit
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), r.kind);
        END LOOP;
        RETURN NULL;
    END IF;

    -- Multistage: dependents of a CF/CC task (or of a deleted unfinished one) end CC with
    -- 'dependency failed'; dependents of a CS task may have become runnable: wake their groups.
    -- The joins of old_rows and new_rows run through EXECUTE, planned for each statement: a
    -- cached plan is sized by the transition tables of the session's first statement (often a
    -- claim of one row), and its nested loop is quadratic for a batch of thousands of outcomes.
    IF TG_OP = 'UPDATE' THEN
        -- (a claim ends no task: no join to plan)
        IF EXISTS (SELECT 1 FROM new_rows n WHERE n.state_id IN ('CS', 'CF', 'CC')) THEN
            EXECUTE $q$
            SELECT array_agg(n.id) FILTER (WHERE n.state_id = 'CS'),
                   array_agg(n.id) FILTER (WHERE n.state_id IN ('CF', 'CC'))
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.state_id <> o.state_id AND n.state_id IN ('CS', 'CF', 'CC')
            $q$ INTO done, failed;
        END IF;
    ELSE
        SELECT array_agg(o.id) INTO failed FROM old_rows o WHERE o.state_id <> 'CS';
    END IF;
    IF failed IS NOT NULL THEN
        UPDATE long_task.task t
           SET state_id = 'CC', error = 'dependency failed'
         WHERE t.depends_on IS NOT NULL AND t.depends_on && failed AND t.state_id IN ('DR', 'AW');
    END IF;
    IF done IS NOT NULL THEN
        FOR r IN
            SELECT DISTINCT t.group_id FROM long_task.task t
             WHERE t.depends_on IS NOT NULL AND t.depends_on && done AND t.state_id IN ('DR', 'AW')
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), 'wake');
        END LOOP;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        -- A node's write (claim, outcome) can only wake (a retry queued) or set a timer: when none
        -- of its rows is waiting or carries a timer, there is nothing to notify, no join to plan.
        IF node_write AND NOT EXISTS (
               SELECT 1 FROM new_rows n
                WHERE n.state_id = 'AW' OR n.run_after IS NOT NULL OR n.lease_until IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        FOR r IN EXECUTE $q$
            SELECT DISTINCT k.group_id, k.kind
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             CROSS JOIN LATERAL (VALUES
                   -- timers: a retry delay or a lease deadline was set
                   (n.group_id, 'sched',
                    (n.state_id = 'AW' AND n.run_after > now() AND n.run_after IS DISTINCT FROM o.run_after)
                    OR (n.lease_until IS NOT NULL AND n.lease_until IS DISTINCT FROM o.lease_until)),
                   (n.group_id, 'wake',
                    n.state_id = 'AW'
                    AND (o.state_id <> 'AW' OR o.group_id <> n.group_id OR o.worker_id IS DISTINCT FROM n.worker_id)),
                   (o.group_id, 'ctl',
                    NOT $1
                    AND o.state_id IN ('AE', 'AC')
                    AND (n.state_id <> o.state_id OR n.run_id IS DISTINCT FROM o.run_id
                         OR n.worker_id IS DISTINCT FROM o.worker_id)),
                   (n.group_id, 'sched',
                    NOT $1
                    AND (n.next_start IS DISTINCT FROM o.next_start
                         OR n.shed_period_id IS DISTINCT FROM o.shed_period_id
                         OR n.shed_period_count IS DISTINCT FROM o.shed_period_count
                         OR n.group_id <> o.group_id))
                 ) k(group_id, kind, hit)
             WHERE k.hit
            $q$ USING node_write
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), r.kind);
        END LOOP;
    ELSE
        FOR r IN
            SELECT DISTINCT o.group_id, k.kind
              FROM old_rows o
             CROSS JOIN LATERAL (VALUES
                   ('ctl', o.state_id IN ('AE', 'AC')),
                   ('sched', o.next_start IS NOT NULL)
                 ) k(kind, hit)
             WHERE k.hit
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), r.kind);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER task_notify_insert ON long_task.task;
DROP TRIGGER task_notify_update ON long_task.task;
DROP TRIGGER task_notify_delete ON long_task.task;
DROP TRIGGER task_notify_timers_insert ON long_task.task;
DROP TRIGGER task_notify_timers_update ON long_task.task;
DROP TRIGGER task_deps_after_update ON long_task.task;
DROP TRIGGER task_deps_after_delete ON long_task.task;

CREATE TRIGGER task_after_insert AFTER INSERT ON long_task.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();
CREATE TRIGGER task_after_update AFTER UPDATE ON long_task.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();
CREATE TRIGGER task_after_delete AFTER DELETE ON long_task.task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();

DROP FUNCTION long_task.task_notify();
DROP FUNCTION long_task.task_notify_timers();
DROP FUNCTION long_task.task_deps_after();

-- ---------------------------------------------------------------------------------------------
-- BEFORE ROW triggers: enter PL/pgSQL only for the rows they change
-- ---------------------------------------------------------------------------------------------

-- Version 3's lost-run reset: only a task queued again from a final state or a draft (the
-- function's own test; NEW as left by task_before_update, which sorts first).
DROP TRIGGER task_before_update_reset_lost ON long_task.task;
CREATE TRIGGER task_before_update_reset_lost BEFORE UPDATE ON long_task.task
    FOR EACH ROW WHEN (NEW.state_id = 'AW' AND OLD.state_id IN ('CS', 'CF', 'CC', 'DR'))
    EXECUTE FUNCTION long_task.task_reset_lost();

-- Version 2's dependency check at insert: only a task with dependencies (the function returns
-- NEW unchanged for a NULL depends_on).
DROP TRIGGER task_deps_before_insert ON long_task.task;
CREATE TRIGGER task_deps_before_insert BEFORE INSERT ON long_task.task
    FOR EACH ROW WHEN (NEW.depends_on IS NOT NULL)
    EXECUTE FUNCTION long_task.task_deps_before_insert();
