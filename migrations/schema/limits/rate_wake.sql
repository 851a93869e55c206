-- The coordinator's scheduler tick for a rate-limited group or key: when a claim found a bucket empty
-- (rate_bucket.starved) and the next token is due, wakes the group's nodes ('wake') and clears
-- the mark. Returns the seconds until the next token of a starved bucket (NULL: nothing to wait
-- for).
CREATE OR REPLACE FUNCTION long_task.rate_wake(p_group_id integer) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    later double precision;
    woken integer;
BEGIN
    -- the group's bucket (key '') and the buckets of keys with a rate of their own, each with the
    -- seconds until its next token
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.rate_due (key text, due double precision) ON COMMIT DROP;
    TRUNCATE pg_temp.rate_due;
    INSERT INTO pg_temp.rate_due
    SELECT b.key,
           (1 - b.tokens) / (coalesce(s.rate_limit, r.rate_limit)
                             / extract(epoch FROM coalesce(s.rate_interval, r.rate_interval)))
           - extract(epoch FROM clock_timestamp() - b.refilled_at)
      FROM long_task.rate_bucket b
      LEFT JOIN long_task.group_settings s ON s.group_id = b.group_id AND b.key = '' AND s.rate_limit IS NOT NULL
      LEFT JOIN LATERAL long_task.key_rate_of(b.group_id, b.key) r ON b.key <> ''
     WHERE b.group_id = p_group_id AND b.starved;
    UPDATE long_task.rate_bucket b SET starved = false
      FROM pg_temp.rate_due d
     WHERE b.group_id = p_group_id AND b.key = d.key AND (d.due IS NULL OR d.due <= 0);
    GET DIAGNOSTICS woken = ROW_COUNT;
    IF woken > 0 THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'wake');
    END IF;
    SELECT min(d.due) INTO later FROM pg_temp.rate_due d WHERE d.due > 0;
    RETURN later;
END
$$;
