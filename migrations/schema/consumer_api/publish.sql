-- Publishes one task and returns its id. A task with a topic and no command is a consumer /
-- handler task; with p_command it is a process task. With a dedup_key that an active task
-- (DR, AW, AE, AC) already holds, nothing is inserted and that task's id is returned.
-- Priority: lower runs first (the reference's convention). max_attempts NULL: the group's default.
CREATE OR REPLACE FUNCTION long_task.publish(
    p_topic text, p_params jsonb DEFAULT NULL, p_run_after timestamptz DEFAULT NULL,
    p_timeout double precision DEFAULT NULL, p_priority integer DEFAULT 0, p_max_attempts integer DEFAULT NULL,
    p_group_id integer DEFAULT 0, p_dedup_key text DEFAULT NULL, p_depends_on bigint[] DEFAULT NULL,
    p_command varchar[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    LOOP
        INSERT INTO long_task.task (topic, params, state_id, run_after, timeout, priority, max_attempts,
                                    group_id, dedup_key, depends_on, command)
        VALUES (p_topic, p_params, 'AW', p_run_after, p_timeout, coalesce(p_priority, 0),
                coalesce(p_max_attempts,
                         (SELECT s.max_attempts FROM long_task.group_settings s WHERE s.group_id = p_group_id), 1),
                coalesce(p_group_id, 0), p_dedup_key, p_depends_on, p_command)
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state_id IN ('DR', 'AW', 'AE', 'AC')
        DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
        SELECT t.id INTO v_id FROM long_task.task t
         WHERE t.dedup_key = p_dedup_key AND t.state_id IN ('DR', 'AW', 'AE', 'AC');
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
        -- the holder ended between the two statements: try the insert again
    END LOOP;
END
$$;
