-- Submits one task and returns its id: the one write path of every client (plain SQL, the CLI,
-- the HTTP API, the Rust Client, and long_task.publish). A task runs a command (argv, no shell;
-- an element %TASK becomes the task id) or carries a topic (a handler or SQL consumer task).
-- Defaults (docs/interfaces.md, "Submitting a task"): state AW (DR: a draft that a schedule or a
-- re-queue starts), priority 0 (lower runs first), group 0, max_attempts the group's (else 1),
-- no timeout, no schedule (a period, or a cron expression p_shed_cron read in p_shed_timezone). p_worker_id pins the task to that node. With a dedup_key that an
-- active task (DR, AW, AE, AC) already holds, nothing is inserted and that task's id returned.
CREATE OR REPLACE FUNCTION long_task.submit(
    p_command varchar[] DEFAULT NULL, p_topic text DEFAULT NULL, p_params jsonb DEFAULT NULL,
    p_state_id char(2) DEFAULT 'AW', p_priority integer DEFAULT 0, p_group_id integer DEFAULT 0,
    p_worker_id bigint DEFAULT NULL, p_cwd varchar DEFAULT NULL, p_run_after timestamptz DEFAULT NULL,
    p_timeout double precision DEFAULT NULL, p_max_attempts integer DEFAULT NULL,
    p_next_start timestamptz DEFAULT NULL, p_shed_period_id char(3) DEFAULT NULL,
    p_shed_period_count integer DEFAULT NULL, p_shed_clone boolean DEFAULT false,
    p_dedup_key text DEFAULT NULL, p_depends_on bigint[] DEFAULT NULL,
    p_shed_cron text DEFAULT NULL, p_shed_timezone text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_command IS NULL AND p_topic IS NULL THEN
        RAISE EXCEPTION 'a task needs a command or a topic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_command) = 0 OR p_command[1] = '' THEN
        RAISE EXCEPTION 'a task''s command needs a program (its first element)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        INSERT INTO long_task.task (command, topic, params, state_id, priority, group_id, worker_id,
                                    cwd, run_after, timeout, max_attempts, next_start,
                                    shed_period_id, shed_period_count, shed_clone, dedup_key, depends_on,
                                    shed_cron, shed_timezone)
        VALUES (p_command, p_topic, p_params, coalesce(p_state_id, 'AW'), coalesce(p_priority, 0),
                coalesce(p_group_id, 0), p_worker_id, p_cwd, p_run_after, p_timeout, p_max_attempts,
                p_next_start, p_shed_period_id, p_shed_period_count, coalesce(p_shed_clone, false),
                p_dedup_key, p_depends_on, p_shed_cron, p_shed_timezone)
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
