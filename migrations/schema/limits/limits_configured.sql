-- Whether any group has a concurrency or rate limit, or fair share: the cheap test (two small tables) that
-- lets every other group's claims, consumes and outcomes skip the limits' work.
CREATE OR REPLACE FUNCTION long_task.limits_configured() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM long_task.group_settings s
                    WHERE s.max_running IS NOT NULL OR s.key_limit IS NOT NULL OR s.rate_limit IS NOT NULL
                           OR s.fair_share)
        OR EXISTS (SELECT 1 FROM long_task.key_limit)
$$;
