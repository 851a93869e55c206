-- The limits of a set of keys in a group, one row per distinct key of p_keys (NULLs skipped):
-- the rule of long_task.key_limit_of and long_task.key_rate_of for many keys in one statement.
-- max_running: the best matching row of long_task.key_limit with a max_running (an exact key
-- first, then the longest LIKE pattern that matches, then the pattern's text), else the group's
-- key_limit (NULL: the key's concurrency is not limited); rate_limit, rate_interval: the best
-- matching row with a rate, the same way (NULL: the key has no rate of its own). A SQL function
-- the planner inlines: a limited claim looks up every key it meets at once
-- (long_task.take_limited), a few index probes per key.
CREATE OR REPLACE FUNCTION long_task.key_limits(p_group_id integer, p_keys text[])
RETURNS TABLE (key text, max_running integer, rate_limit integer, rate_interval interval)
LANGUAGE sql STABLE AS $$
    SELECT u.key,
           coalesce(
               (SELECT k.max_running FROM long_task.key_limit k
                 WHERE k.group_id = p_group_id AND k.max_running IS NOT NULL
                   AND (k.key_pattern = u.key OR u.key LIKE k.key_pattern)
                 ORDER BY k.key_pattern = u.key DESC, length(k.key_pattern) DESC, k.key_pattern
                 LIMIT 1),
               (SELECT s.key_limit FROM long_task.group_settings s WHERE s.group_id = p_group_id)),
           r.rate_limit, r.rate_interval
      FROM (SELECT DISTINCT x.key FROM unnest(p_keys) AS x(key) WHERE x.key IS NOT NULL) u
      LEFT JOIN LATERAL (
             SELECT k.rate_limit, k.rate_interval FROM long_task.key_limit k
              WHERE k.group_id = p_group_id AND k.rate_limit IS NOT NULL
                AND (k.key_pattern = u.key OR u.key LIKE k.key_pattern)
              ORDER BY k.key_pattern = u.key DESC, length(k.key_pattern) DESC, k.key_pattern
              LIMIT 1) r ON true
$$;
