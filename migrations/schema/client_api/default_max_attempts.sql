-- The attempts a task of a group gets when it is inserted without max_attempts: the group's
-- setting (long_task.group_settings.max_attempts), else 1.
CREATE OR REPLACE FUNCTION long_task.default_max_attempts(p_group_id integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT s.max_attempts FROM long_task.group_settings s WHERE s.group_id = p_group_id), 1)
$$;
