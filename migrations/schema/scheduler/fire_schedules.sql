-- Fire every due schedule of a group once: a re-run schedule (shed_clone = false) queues the task
-- itself when it is final or a draft (an active task skips the run); a clone schedule inserts a
-- waiting copy. Rows are locked SKIP LOCKED, so two nodes firing at once fire each schedule once.
-- A copy the group's allow-list refuses (the list changed since the task was admitted) is not
-- made: the firing is recorded as a `schedule_refused` event and the schedule moves on (checked
-- first rather than caught: an exception block per firing would open a subtransaction each).
-- Returns the number fired and the seconds until the next due schedule (NULL: none).
CREATE OR REPLACE FUNCTION long_task.fire_schedules(p_group_id integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (fired integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN
        SELECT t.* FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.next_start IS NOT NULL AND t.next_start <= now()
         ORDER BY t.next_start
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        IF r.shed_clone AND long_task.program_refusal(r.command, r.group_id) IS NOT NULL THEN
            INSERT INTO long_task.event (group_id, kind, task_id, detail)
            VALUES (r.group_id, 'schedule_refused', r.id,
                    format('program "%s" is not allowed in group %s', r.command[1], r.group_id));
        ELSIF r.shed_clone THEN
            INSERT INTO long_task.task (params, state_id, priority, group_id, worker_id, command, cwd,
                                        shed_parent_id, max_attempts, timeout)
            VALUES (r.params, 'AW', r.priority, r.group_id, CASE WHEN r.pinned THEN r.worker_id END, r.command, r.cwd,
                    r.id, r.max_attempts, r.timeout);
        ELSIF r.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
            UPDATE long_task.task SET state_id = 'AW' WHERE id = r.id;
        END IF;
        UPDATE long_task.task
           SET next_start = long_task.next_planned(r.next_start, r.shed_period_id, r.shed_period_count, now())
         WHERE id = r.id;
        n := n + 1;
    END LOOP;
    RETURN QUERY
        SELECT n, extract(epoch FROM min(t.next_start) - now())::double precision
          FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.next_start IS NOT NULL;
END
$$;
