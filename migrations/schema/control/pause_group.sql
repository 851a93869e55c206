-- Pauses a group: no node starts a task of it and no consumer takes one until resume_group (or
-- an UPDATE of group_settings.paused). Running tasks go on, unless p_cancel_running: then each
-- is cancelled through the normal path (AC; its node kills the process group and writes CC).
-- Returns how many running tasks were cancelled. Runs with the caller's privileges
-- (pgtaskd_operator: group_settings and the cancel of tasks of its groups).
CREATE OR REPLACE FUNCTION long_task.pause_group(p_group_id integer, p_cancel_running boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cancelled integer := 0;
BEGIN
    INSERT INTO long_task.group_settings AS s (group_id, paused) VALUES (p_group_id, true)
    ON CONFLICT (group_id) DO UPDATE SET paused = true;
    IF p_cancel_running THEN
        UPDATE long_task.task t SET state_id = 'AC'
         WHERE t.group_id = p_group_id AND t.state_id = 'AE';
        GET DIAGNOSTICS cancelled = ROW_COUNT;
    END IF;
    RETURN cancelled;
END
$$;
