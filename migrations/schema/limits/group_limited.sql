-- Whether a group has any concurrency or rate limit (group_settings.max_running, key_limit,
-- rate_limit, or a row of long_task.key_limit) or takes turns across keys (fair_share): its claims take the limited path
-- (long_task.take_limited) and the end of its runs wakes its nodes.
-- PL/pgSQL, like long_task.limits_configured: planned once per session, not at every call.
CREATE OR REPLACE FUNCTION long_task.group_limited(p_group_id integer) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM long_task.group_settings s
                    WHERE s.group_id = p_group_id
                      AND (s.max_running IS NOT NULL OR s.key_limit IS NOT NULL OR s.rate_limit IS NOT NULL
                           OR s.fair_share))
        OR EXISTS (SELECT 1 FROM long_task.key_limit k WHERE k.group_id = p_group_id);
END
$$;
