-- The rate limit of one key in a group (the rule of long_task.key_limits): the best matching row
-- of long_task.key_limit that has a rate (an exact key first, then the longest LIKE pattern, then
-- the pattern's text); no row: the key has no rate of its own (the group's rate_limit still
-- counts its starts).
CREATE OR REPLACE FUNCTION long_task.key_rate_of(p_group_id integer, p_key text,
                                                 OUT rate_limit integer, OUT rate_interval interval)
LANGUAGE sql STABLE AS $$
    SELECT l.rate_limit, l.rate_interval FROM long_task.key_limits(p_group_id, ARRAY[p_key]) l
$$;
