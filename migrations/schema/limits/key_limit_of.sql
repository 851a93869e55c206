-- The concurrency limit of one key in a group (the rule of long_task.key_limits): its row in
-- long_task.key_limit with a max_running (an exact key first, then the longest LIKE pattern that
-- matches, then the pattern's text), else the group's key_limit; NULL: the key is not limited.
CREATE OR REPLACE FUNCTION long_task.key_limit_of(p_group_id integer, p_key text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT l.max_running FROM long_task.key_limits(p_group_id, ARRAY[p_key]) l),
        (SELECT s.key_limit FROM long_task.group_settings s WHERE s.group_id = p_group_id))
$$;
