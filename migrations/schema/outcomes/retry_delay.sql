-- The back-off before attempt `attempt + 1`, in seconds, after attempt number `attempt` (1-based)
-- failed:   d = min(base * 2^(attempt-1), max);   delay = d * (1 - jitter * random())
-- so the delay lies in [d * (1 - jitter), d]: never above `max`, never below d * (1 - jitter).
-- Task settings win over the group's, the group's over the built-in defaults (1 s, 300 s, 0.1).
CREATE OR REPLACE FUNCTION long_task.retry_delay(p_group_id integer, p_attempt integer,
                                      p_base double precision, p_max double precision, p_jitter double precision)
RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT least(b.base * power(2::double precision, least(greatest(p_attempt, 1) - 1, 60)), b.max)
           * (1 - b.jitter * random())
      FROM (SELECT coalesce(p_base, s.retry_base, 1) AS base,
                   coalesce(p_max, s.retry_max, 300) AS max,
                   coalesce(p_jitter, s.retry_jitter, 0.1) AS jitter
              FROM (SELECT 1) one
              LEFT JOIN long_task.group_settings s ON s.group_id = p_group_id) b
$$;
