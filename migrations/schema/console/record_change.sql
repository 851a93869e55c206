-- Records a person's change in the event log: a cancel or re-queue (long_task.cancel/requeue), a
-- task's priority, a node's stop code or process limit (the console, db::admin), a node's
-- hand-over (long_task.hand_over_node). The detail
-- gets ' by <login role>' (session_user) appended here, so a caller cannot name someone else;
-- the kind must be one of these. The one way these events are written, so that a role allowed
-- to change tasks or nodes needs no INSERT on long_task.event itself (every entry names the
-- login role that wrote it, so a forged one names its forger).
CREATE OR REPLACE FUNCTION long_task.record_change(p_kind text, p_group_id integer, p_task_id bigint,
                                                   p_worker_id bigint, p_run_id uuid, p_detail text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('cancel', 'requeue', 'priority', 'node_stop', 'node_limit', 'node_hand_over') THEN
        RAISE EXCEPTION 'unknown change kind %', quote_nullable(p_kind)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'known: cancel, requeue, priority, node_stop, node_limit, node_hand_over';
    END IF;
    -- SECURITY DEFINER (privileges.sql): a login limited by long_task.group_access writes
    -- events of its own groups only
    PERFORM long_task.check_group_access(p_group_id, session_user);
    INSERT INTO long_task.event (group_id, kind, worker_id, task_id, run_id, detail)
    VALUES (p_group_id, p_kind, p_worker_id, p_task_id, p_run_id,
            concat_ws(' by ', p_detail, session_user));
END
$$;
