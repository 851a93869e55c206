-- The attempts a task of a group gets when it is inserted without max_attempts: the group's
-- setting (long_task.group_settings.max_attempts), else 1.
-- PL/pgSQL: the row trigger calls it for every task inserted without max_attempts, and a SQL
-- function with a sub-select is planned at every call (PostgreSQL 15).
CREATE OR REPLACE FUNCTION long_task.default_max_attempts(p_group_id integer) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.max_attempts FROM long_task.group_settings s WHERE s.group_id = p_group_id), 1);
END
$$;
