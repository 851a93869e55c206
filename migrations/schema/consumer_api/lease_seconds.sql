-- A SQL consumer's lease in seconds: the task's timeout, else the group's lease, else 60 s.
CREATE OR REPLACE FUNCTION long_task.lease_seconds(p_group_id integer, p_timeout double precision)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_timeout, (SELECT s.lease FROM long_task.group_settings s WHERE s.group_id = p_group_id), 60)
$$;
