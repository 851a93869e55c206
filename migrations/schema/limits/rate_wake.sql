-- The coordinator's scheduler tick for a rate-limited group: when a claim found its bucket empty
-- (rate_bucket.starved) and the next token is due, wakes the group's nodes ('wake') and clears
-- the mark. Returns the seconds until the next token of a starved bucket (NULL: nothing to wait
-- for).
CREATE OR REPLACE FUNCTION long_task.rate_wake(p_group_id integer) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    due double precision;
BEGIN
    SELECT (1 - b.tokens) / (s.rate_limit / extract(epoch FROM s.rate_interval))
           - extract(epoch FROM clock_timestamp() - b.refilled_at)
      INTO due
      FROM long_task.rate_bucket b JOIN long_task.group_settings s ON s.group_id = b.group_id
     WHERE b.group_id = p_group_id AND b.starved AND s.rate_limit IS NOT NULL;
    IF due IS NULL THEN
        RETURN NULL;
    ELSIF due > 0 THEN
        RETURN due;
    END IF;
    UPDATE long_task.rate_bucket b SET starved = false WHERE b.group_id = p_group_id AND b.starved;
    PERFORM pg_notify(long_task.channel(p_group_id), 'wake');
    RETURN NULL;
END
$$;
