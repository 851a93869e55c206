-- One firing of a due schedule row (either rule) for the slot p_slot: a re-run schedule
-- (shed_clone = false) queues the task itself when it is final or a draft (an active task skips
-- the run); a clone schedule inserts a waiting copy. Both record the slot in planned_start. A copy
-- the group's allow-list refuses (the list changed since the task was admitted) is not made: the
-- firing is recorded as a `schedule_refused` event (checked first rather than caught: an exception
-- block per firing would open a subtransaction each). The caller holds the row's lock and moves
-- its next_start.
CREATE OR REPLACE FUNCTION long_task.fire_schedule(r long_task.task, p_slot timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF r.shed_clone AND long_task.program_refusal(r.command, r.group_id) IS NOT NULL THEN
        INSERT INTO long_task.event (group_id, kind, task_id, detail)
        VALUES (r.group_id, 'schedule_refused', r.id,
                format('program "%s" is not allowed in group %s', r.command[1], r.group_id));
    ELSIF r.shed_clone THEN
        INSERT INTO long_task.task (params, state_id, priority, group_id, worker_id, command, cwd,
                                    shed_parent_id, max_attempts, timeout, planned_start, concurrency_key)
        VALUES (r.params, 'AW', r.priority, r.group_id, CASE WHEN r.pinned THEN r.worker_id END, r.command, r.cwd,
                r.id, r.max_attempts, r.timeout, p_slot, r.concurrency_key);
    ELSIF r.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
        UPDATE long_task.task SET state_id = 'AW', planned_start = p_slot WHERE id = r.id;
    END IF;
END
$$;
