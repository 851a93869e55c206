-- Publishes one task and returns its id: long_task.submit in the consumer API's terms (the
-- jobs.publish of the reference consumer API). A task with a topic and no command is a consumer
-- or handler task; with p_command it is a process task. With a dedup_key that an active task
-- (DR, AW, AE, AC) already holds, nothing is inserted and that task's id is returned.
-- Priority: lower runs first (the reference's convention). max_attempts NULL: the group's default.
CREATE OR REPLACE FUNCTION long_task.publish(
    p_topic text, p_params jsonb DEFAULT NULL, p_run_after timestamptz DEFAULT NULL,
    p_timeout double precision DEFAULT NULL, p_priority integer DEFAULT 0, p_max_attempts integer DEFAULT NULL,
    p_group_id integer DEFAULT 0, p_dedup_key text DEFAULT NULL, p_depends_on bigint[] DEFAULT NULL,
    p_command varchar[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN long_task.submit(p_command => p_command, p_topic => p_topic, p_params => p_params,
                            p_run_after => p_run_after, p_timeout => p_timeout, p_priority => p_priority,
                            p_max_attempts => p_max_attempts, p_group_id => p_group_id,
                            p_dedup_key => p_dedup_key, p_depends_on => p_depends_on);
END
$$;
