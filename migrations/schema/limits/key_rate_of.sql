-- The rate limit of one key in a group: the best matching row of long_task.key_limit that has a
-- rate (an exact key first, then the longest LIKE pattern, then the pattern's text); no row:
-- the key has no rate of its own (the group's rate_limit still counts its starts).
CREATE OR REPLACE FUNCTION long_task.key_rate_of(p_group_id integer, p_key text,
                                                 OUT rate_limit integer, OUT rate_interval interval)
LANGUAGE sql STABLE AS $$
    SELECT k.rate_limit, k.rate_interval FROM long_task.key_limit k
     WHERE k.group_id = p_group_id AND k.rate_limit IS NOT NULL
       AND (k.key_pattern = p_key OR p_key LIKE k.key_pattern)
     ORDER BY k.key_pattern = p_key DESC, length(k.key_pattern) DESC, k.key_pattern
     LIMIT 1
$$;
