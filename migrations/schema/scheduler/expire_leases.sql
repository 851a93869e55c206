-- Fails every consumer attempt of a group whose lease has passed (error 'lease expired'; retried
-- while attempts remain, like any failure; a cancel-requested one ends CC).
-- With p_since (the database time of the previous tick) only deadlines after p_since - 1 s are
-- looked at: the lease index holds an entry for every consumed task until vacuum, so a scan from
-- the oldest deadline would walk them all (and all of them while the vacuum horizon is held
-- back); a lease that became visible later than 1 s after its deadline passed (a consume
-- transaction open longer than its lease) is caught by the next full pass (p_since NULL, which
-- the Scheduler sends when it starts and every few minutes). Deadlines to come reach the
-- Scheduler as 'lease' notifications; only a full pass reports the next one (next_due_in).
-- Returns how many expired, and the seconds until the next deadline (NULL: none or not looked
-- for; 0: a full batch, go again).
CREATE OR REPLACE FUNCTION long_task.expire_leases(p_group_id integer, p_since timestamptz DEFAULT NULL,
                                                   p_limit integer DEFAULT 1000)
RETURNS TABLE (expired integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    run_ids uuid[];
    n integer := 0;
    window_start timestamptz := coalesce(p_since - interval '1 second', '-infinity');
BEGIN
    SELECT array_agg(x.id), array_agg(x.run_id) INTO ids, run_ids
      FROM (SELECT t.id, t.run_id FROM long_task.task t
             WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL
               AND t.lease_until > window_start AND t.lease_until <= now()
               AND t.state_id IN ('AE', 'AC')
             ORDER BY t.lease_until
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) x;
    IF ids IS NOT NULL THEN
        SELECT count(*) INTO n
          FROM long_task.complete_runs(ids, run_ids, array_fill('CF'::text, ARRAY[cardinality(ids)]),
                                       array_fill('lease expired'::text, ARRAY[cardinality(ids)]),
                                       NULL, NULL, NULL, NULL, NULL, NULL);
    END IF;
    IF n >= p_limit THEN
        RETURN QUERY SELECT n, 0::double precision;
    ELSIF p_since IS NULL THEN
        RETURN QUERY
            SELECT n, extract(epoch FROM min(t.lease_until) - now())::double precision
              FROM long_task.task t
             WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL AND t.state_id IN ('AE', 'AC');
    ELSE
        RETURN QUERY SELECT n, NULL::double precision;
    END IF;
END
$$;
