-- The coordinator's scheduler tick for a rate-limited group or key: when a claim found a bucket
-- empty (rate_bucket.starved) and the next token is due, wakes the group's nodes ('wake') and
-- clears the mark of the buckets that are due. Returns the seconds until the next token of a
-- starved bucket not yet due (NULL: nothing to wait for). One statement, and nothing written
-- for a group without a starved bucket (it runs on every tick of every group).
CREATE OR REPLACE FUNCTION long_task.rate_wake(p_group_id integer) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    later double precision;
    woken integer;
BEGIN
    -- the group's bucket (key '') and the buckets of keys with a rate of their own, each with the
    -- seconds until its next token
    WITH due AS (
        SELECT b.key,
               (1 - b.tokens) / (coalesce(s.rate_limit, r.rate_limit)
                                 / extract(epoch FROM coalesce(s.rate_interval, r.rate_interval)))
               - extract(epoch FROM clock_timestamp() - b.refilled_at) AS secs
          FROM long_task.rate_bucket b
          LEFT JOIN long_task.group_settings s ON s.group_id = b.group_id AND b.key = '' AND s.rate_limit IS NOT NULL
          LEFT JOIN LATERAL long_task.key_rate_of(b.group_id, b.key) r ON b.key <> ''
         WHERE b.group_id = p_group_id AND b.starved
    ), woke AS (
        UPDATE long_task.rate_bucket b SET starved = false
          FROM due d
         WHERE b.group_id = p_group_id AND b.key = d.key AND (d.secs IS NULL OR d.secs <= 0)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM woke), (SELECT min(d.secs) FROM due d WHERE d.secs > 0)
      INTO woken, later;
    IF woken > 0 THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'wake');
    END IF;
    RETURN later;
END
$$;
