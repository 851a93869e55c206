-- Fails every consumer attempt of a group whose lease has passed (error 'lease expired'; retried
-- while attempts remain, like any failure; a cancel-requested one ends CC). Returns how many, and
-- the seconds until the next lease deadline of the group (NULL: none).
CREATE OR REPLACE FUNCTION long_task.expire_leases(p_group_id integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (expired integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    run_ids uuid[];
    n integer := 0;
BEGIN
    SELECT array_agg(x.id), array_agg(x.run_id) INTO ids, run_ids
      FROM (SELECT t.id, t.run_id FROM long_task.task t
             WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL AND t.lease_until <= now()
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
    RETURN QUERY
        SELECT n, CASE WHEN n >= p_limit THEN 0::double precision
                       ELSE extract(epoch FROM min(t.lease_until) - now())::double precision END
          FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL AND t.state_id IN ('AE', 'AC');
END
$$;
