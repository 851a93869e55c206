-- The AFTER statement trigger of every write to long_task.task: the dependency work first (its
-- cascade fires this trigger again for the dependents), then the ready ring (an entry for every
-- task that became claimable: waiting, no run_after to come, every dependency CS), then one
-- notification per group and kind on the group's channel (long_task.channel):
--   wake         tasks became runnable (AW), or runs of a group with limits ended
--   ctl          a running task was cancelled, deleted, reassigned or finished by someone else
--   sched        a schedule was set, changed or removed, or a retry delay was set
--   lease <ms>   consumer leases were set; the earliest deadline of the statement, in
--                milliseconds since the epoch (database clock), rounded up to 100 ms
-- and, for followers outside the nodes (pgtaskd wait, logs -f, the HTTP output stream), one
-- notification on long_task_done per statement that ended tasks (CS, CF, CC) or deleted
-- unfinished ones, whoever wrote it: their ids, space-separated, or '*' beyond 700 ids.
-- A node's own writes (long_task.node_write: claims, consumes, outcomes) send no ctl and no
-- schedule 'sched'. The joins of old_rows and new_rows are planned per statement (EXECUTE) and
-- skipped when they cannot find anything.
-- SET enable_seqscan = off, jit = off: PL/pgSQL plans its statements once per session and keeps
-- them; planned while long_task.task was small (a fresh database, a node started on an empty
-- queue), a lookup of rows by id would stay a scan of the whole table, once per call, however
-- large the table grew. Off, the plan takes the indexes at any size (and a plan costed past
-- jit_above_cost by the disabled paths is not JIT-compiled at every call).
CREATE OR REPLACE FUNCTION long_task.task_after_write() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off AS $$
DECLARE
    r record;
    node_write boolean := coalesce(current_setting('long_task.node_write', true), '') = 'on';
    done bigint[];
    failed bigint[];
    ended bigint[];
    -- the groups that runs left (ended, or moved to another group)
    left_groups integer[];
    g integer;
    slot smallint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        slot := long_task.ready_insert_slot();
        INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command, worker_id,
                                    concurrency_key)
        SELECT slot, n.group_id, n.priority, n.last_state_change, n.id, n.topic,
               n.command IS NOT NULL, n.worker_id, n.concurrency_key
          FROM new_rows n
         WHERE n.state_id = 'AW' AND (n.run_after IS NULL OR n.run_after <= now())
           AND (n.depends_on IS NULL OR NOT EXISTS (
                   SELECT 1 FROM long_task.task d WHERE d.id = ANY (n.depends_on) AND d.state_id <> 'CS'));
        -- a fair-share group's new keys join its turns (long_task.take_fair)
        IF EXISTS (SELECT 1 FROM long_task.group_settings s WHERE s.fair_share) THEN
            INSERT INTO long_task.fair_key (group_id, key)
            SELECT DISTINCT n.group_id, n.concurrency_key FROM new_rows n
             WHERE n.concurrency_key IS NOT NULL AND n.state_id = 'AW'
               AND n.group_id IN (SELECT s.group_id FROM long_task.group_settings s WHERE s.fair_share)
            ON CONFLICT DO NOTHING;
        END IF;
        FOR r IN
            SELECT DISTINCT n.group_id, k.kind
              FROM new_rows n
             CROSS JOIN LATERAL (VALUES
                   ('wake', n.state_id = 'AW'),
                   ('sched', n.next_start IS NOT NULL),
                   ('sched', n.state_id = 'AW' AND n.run_after > now())
                 ) k(kind, hit)
             WHERE k.hit
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), r.kind);
        END LOOP;
        RETURN NULL;
    END IF;

    -- Multistage: dependents of a CF/CC task (or of a deleted unfinished one) end CC with
    -- 'dependency failed'; dependents of a CS task may have become runnable: they get their
    -- entry on the ready ring and their groups are woken.
    -- The joins of old_rows and new_rows run through EXECUTE, planned for each statement: a
    -- cached plan is sized by the transition tables of the session's first statement (often a
    -- claim of one row), and its nested loop is quadratic for a batch of thousands of outcomes.
    IF TG_OP = 'UPDATE' THEN
        -- (a claim ends no task: no join to plan)
        IF NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.state_id IN ('CS', 'CF', 'CC')) THEN
            NULL;
        ELSIF NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.state_id IN ('CS', 'CF', 'CC')) THEN
            -- no row was final before (an outcome, a cancel): every final row just ended, and
            -- there is no join to plan
            SELECT array_agg(n.id) FILTER (WHERE n.state_id = 'CS'),
                   array_agg(n.id) FILTER (WHERE n.state_id IN ('CF', 'CC'))
              INTO done, failed
              FROM new_rows n;
        ELSE
            EXECUTE $q$
            SELECT array_agg(n.id) FILTER (WHERE n.state_id = 'CS'),
                   array_agg(n.id) FILTER (WHERE n.state_id IN ('CF', 'CC'))
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.state_id <> o.state_id AND n.state_id IN ('CS', 'CF', 'CC')
            $q$ INTO done, failed;
        END IF;
        IF done IS NOT NULL OR failed IS NOT NULL THEN
            ended := coalesce(done, '{}') || coalesce(failed, '{}');
        END IF;
    ELSE
        SELECT array_agg(o.id) FILTER (WHERE o.state_id <> 'CS'),
               array_agg(o.id) FILTER (WHERE o.state_id NOT IN ('CS', 'CF', 'CC'))
          INTO failed, ended
          FROM old_rows o;
    END IF;
    IF cardinality(ended) > 0 THEN
        PERFORM pg_notify('long_task_done',
                          CASE WHEN cardinality(ended) <= 700 THEN array_to_string(ended, ' ') ELSE '*' END);
    END IF;
    IF failed IS NOT NULL THEN
        UPDATE long_task.task t
           SET state_id = 'CC', error = 'dependency failed'
         WHERE t.depends_on IS NOT NULL AND t.depends_on && failed AND t.state_id IN ('DR', 'AW');
    END IF;
    IF done IS NOT NULL THEN
        -- (state_id IN ('DR', 'AW'): the predicate of the dependents' index, task_depends_on_idx)
        slot := long_task.ready_insert_slot();
        FOR r IN
            SELECT t.id, t.group_id, t.priority, t.last_state_change, t.topic, t.command IS NOT NULL AS has_command,
                   t.worker_id, t.concurrency_key, t.state_id = 'AW' AND (t.run_after IS NULL OR t.run_after <= now())
                   AND NOT EXISTS (SELECT 1 FROM long_task.task d
                                    WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS') AS claimable
              FROM long_task.task t
             WHERE t.depends_on IS NOT NULL AND t.depends_on && done AND t.state_id IN ('DR', 'AW')
        LOOP
            IF r.claimable THEN
                INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command, worker_id,
                                    concurrency_key)
                VALUES (slot, r.group_id, r.priority, r.last_state_change, r.id, r.topic, r.has_command, r.worker_id,
                        r.concurrency_key);
            END IF;
            PERFORM pg_notify(long_task.channel(r.group_id), 'wake');
        END LOOP;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        FOR r IN
            SELECT n.group_id, min(n.lease_until) AS due FROM new_rows n
             WHERE n.lease_until IS NOT NULL AND n.state_id IN ('AE', 'AC')
             GROUP BY n.group_id
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id),
                              'lease ' || (ceil(extract(epoch FROM r.due) * 10) * 100)::bigint);
        END LOOP;
        -- Tasks that became claimable (queued, re-queued, due, re-prioritized, moved, pinned):
        -- an entry on the ready ring; an older entry of the same task is left to be dropped.
        IF EXISTS (SELECT 1 FROM new_rows n
                    WHERE n.state_id = 'AW' AND (n.run_after IS NULL OR n.run_after <= now())) THEN
            EXECUTE $q$
            INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command, worker_id,
                                    concurrency_key)
            SELECT $1, n.group_id, n.priority, n.last_state_change, n.id, n.topic,
                   n.command IS NOT NULL, n.worker_id, n.concurrency_key
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.state_id = 'AW' AND (n.run_after IS NULL OR n.run_after <= now())
               AND NOT (o.state_id = 'AW' AND o.run_after IS NULL
                        AND o.last_state_change = n.last_state_change AND o.group_id = n.group_id
                        AND o.priority = n.priority AND o.worker_id IS NOT DISTINCT FROM n.worker_id
                        AND o.topic IS NOT DISTINCT FROM n.topic
                        AND o.concurrency_key IS NOT DISTINCT FROM n.concurrency_key
                        AND (o.command IS NULL) = (n.command IS NULL))
               AND (n.depends_on IS NULL OR NOT EXISTS (
                       SELECT 1 FROM long_task.task d WHERE d.id = ANY (n.depends_on) AND d.state_id <> 'CS'))
            $q$ USING long_task.ready_insert_slot();
        END IF;
        -- Runs of a limited group ended or moved elsewhere: its nodes may start more. When no
        -- row is running after the write (an outcome batch: complete_runs), every running row
        -- before it left AE/AC, and its groups come from old_rows alone, with no join to plan.
        IF long_task.limits_configured() AND EXISTS (SELECT 1 FROM old_rows o WHERE o.state_id IN ('AE', 'AC')) THEN
            IF NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.state_id IN ('AE', 'AC')) THEN
                left_groups := ARRAY(SELECT DISTINCT o.group_id FROM old_rows o WHERE o.state_id IN ('AE', 'AC'));
            ELSE
                EXECUTE $q$
                    SELECT array_agg(DISTINCT o.group_id) FROM old_rows o JOIN new_rows n ON n.id = o.id
                     WHERE o.state_id IN ('AE', 'AC')
                       AND (n.state_id NOT IN ('AE', 'AC') OR n.group_id <> o.group_id)
                    $q$ INTO left_groups;
            END IF;
            FOREACH g IN ARRAY coalesce(left_groups, '{}') LOOP
                IF long_task.group_limited(g) THEN
                    PERFORM pg_notify(long_task.channel(g), 'wake');
                END IF;
            END LOOP;
        END IF;
        -- A node's write (claim, consume, outcome) can only wake (a retry queued) or set a retry
        -- timer: when none of its rows is waiting, there is nothing more to notify, no join to plan.
        IF node_write AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.state_id = 'AW') THEN
            RETURN NULL;
        END IF;
        FOR r IN EXECUTE $q$
            SELECT DISTINCT k.group_id, k.kind
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             CROSS JOIN LATERAL (VALUES
                   -- a retry delay was set
                   (n.group_id, 'sched',
                    n.state_id = 'AW' AND n.run_after > now() AND n.run_after IS DISTINCT FROM o.run_after),
                   (n.group_id, 'wake',
                    n.state_id = 'AW'
                    AND (o.state_id <> 'AW' OR o.group_id <> n.group_id OR o.worker_id IS DISTINCT FROM n.worker_id
                         OR (o.run_after IS NOT NULL AND n.run_after IS NULL))),
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
                         OR n.shed_cron IS DISTINCT FROM o.shed_cron
                         OR n.shed_timezone IS DISTINCT FROM o.shed_timezone
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
                   ('sched', o.next_start IS NOT NULL),
                   -- a running task of a limited group deleted: its nodes may start more
                   ('wake', o.state_id IN ('AE', 'AC') AND long_task.limits_configured()
                            AND long_task.group_limited(o.group_id))
                 ) k(kind, hit)
             WHERE k.hit
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), r.kind);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
