-- The concurrency limit of one key in a group: its row in long_task.key_limit with a
-- max_running (an exact key
-- first, then the longest LIKE pattern that matches, then the pattern's text), else the group's
-- key_limit; NULL: the key is not limited.
CREATE OR REPLACE FUNCTION long_task.key_limit_of(p_group_id integer, p_key text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT k.max_running FROM long_task.key_limit k
          WHERE k.group_id = p_group_id AND k.max_running IS NOT NULL
            AND (k.key_pattern = p_key OR p_key LIKE k.key_pattern)
          ORDER BY k.key_pattern = p_key DESC, length(k.key_pattern) DESC, k.key_pattern
          LIMIT 1),
        (SELECT s.key_limit FROM long_task.group_settings s WHERE s.group_id = p_group_id))
$$;
