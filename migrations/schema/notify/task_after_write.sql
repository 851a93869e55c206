-- The AFTER statement trigger of every write to long_task.task: the dependency work first (its
-- cascade fires this trigger again for the dependents), then one notification per group and kind
-- on the group's channel (long_task.channel):
--   wake   tasks became runnable (AW)
--   ctl    a running task was cancelled, deleted, reassigned or finished by someone else
--   sched  a schedule was set, changed or removed, or a retry delay or lease deadline was set
-- A node's own writes (long_task.node_write) send no ctl and no schedule 'sched'. The joins of
-- old_rows and new_rows are planned per statement (EXECUTE) and skipped when they cannot find
-- anything.
CREATE OR REPLACE FUNCTION long_task.task_after_write() RETURNS trigger
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
