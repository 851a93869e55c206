-- Makes waiting tasks of a group whose run_after has come (a retry's back-off, a delayed
-- publish) claimable: run_after is cleared, so the statement trigger gives each an entry on the
-- ready ring (a task with a run_after to come has none). With p_since (the previous tick's
-- database time) only run_after values after p_since - 5 s are looked at (a retry committed
-- after that tick's snapshot is still seen); NULL: all. Returns how many.
CREATE OR REPLACE FUNCTION long_task.promote_due(p_group_id integer, p_since timestamptz DEFAULT NULL,
                                                 p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE long_task.task t SET run_after = NULL
     WHERE t.id = ANY (ARRAY(
               SELECT x.id FROM long_task.task x
                WHERE x.group_id = p_group_id AND x.state_id = 'AW' AND x.run_after IS NOT NULL
                  AND x.run_after <= now()
                  AND (p_since IS NULL OR x.run_after > p_since - interval '5 seconds')
                ORDER BY x.run_after
                LIMIT p_limit
                  FOR UPDATE SKIP LOCKED))
       AND t.state_id = 'AW';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
