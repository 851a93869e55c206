-- Acknowledges many consumed tasks in one statement (the fast path for batch consumers):
-- ack of each id with the matching result (p_results NULL: no results). Returns the ids written
-- and their new state; ids not running are left out.
CREATE OR REPLACE FUNCTION long_task.ack_many(p_ids bigint[], p_results jsonb[] DEFAULT NULL)
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    run_ids uuid[];
    results jsonb[];
BEGIN
    SELECT array_agg(t.id ORDER BY a.ord), array_agg(t.run_id ORDER BY a.ord), array_agg(a.result ORDER BY a.ord)
      INTO ids, run_ids, results
      FROM unnest(p_ids, p_results) WITH ORDINALITY AS a(id, result, ord)
     CROSS JOIN LATERAL (
            -- by primary key, the state tested outside: inside, it would steer the lookup to the
            -- partial index of running rows, walked whole (with every dead entry it holds)
            SELECT x.id, x.run_id, x.state_id, x.group_id FROM long_task.task x WHERE x.id = a.id LIMIT 1) t
     WHERE t.state_id IN ('AE', 'AC')
       -- a task of a group the login role may not use (long_task.group_access) is not there for it
       AND coalesce(t.group_id = ANY ((SELECT long_task.accessible_groups(session_user))::integer[]), true);
    IF ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT c.id, c.state_id
          FROM long_task.complete_runs(ids, run_ids, array_fill('CS'::text, ARRAY[cardinality(ids)]),
                                       NULL, NULL, NULL, NULL, NULL, results, NULL) c;
END
$$;
