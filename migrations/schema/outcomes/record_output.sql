-- Live output: the tails of running attempts, written while they run (a node's flush round: one
-- call for all its runs whose output changed). Fenced like every node write: a row changes only
-- where the task is still AE/AC under that run_id. A NULL tail leaves that stream as it is. A
-- row locked by another transaction (an outcome, a cancel) is skipped, never waited for (no lock
-- order to get wrong against complete_runs): the node writes it in its next round, and the
-- outcome carries the final tails anyway. The triggers let such a row through untouched: the
-- BEFORE trigger (task_before_write) finds no state, worker, command or period change and only
-- keeps created_by/changed_by; the AFTER trigger (task_after_write) sees a node write with no
-- final and no waiting row and returns before any join or notification (no wake/ctl/sched: no
-- node is woken). It sends one notification itself, on long_task_output, for followers (pgtaskd
-- logs -f, the HTTP stream): the ids written, space-separated, or '*' when they would not fit.
-- Returns the ids written.
CREATE OR REPLACE FUNCTION long_task.record_output(
    p_ids bigint[], p_run_ids uuid[], p_stdout text[], p_stderr text[])
RETURNS TABLE (id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    written bigint[];
BEGIN
    PERFORM set_config('long_task.node_write', 'on', true);
    WITH o AS MATERIALIZED (
        SELECT u.id, u.run_id, u.stdout_tail, u.stderr_tail
          FROM unnest(p_ids, p_run_ids, p_stdout, p_stderr) AS u(id, run_id, stdout_tail, stderr_tail)
         CROSS JOIN LATERAL (
                -- the state is tested outside, as in complete_runs: inside, it would steer the
                -- lookup to the partial index of running rows
                SELECT x.state_id
                  FROM long_task.task x
                 WHERE x.id = u.id AND x.run_id = u.run_id
                   FOR UPDATE SKIP LOCKED
                 LIMIT 1) cur
         WHERE cur.state_id IN ('AE', 'AC')
    ), upd AS (
        UPDATE long_task.task t
           SET stdout_tail = coalesce(o.stdout_tail, t.stdout_tail),
               stderr_tail = coalesce(o.stderr_tail, t.stderr_tail)
          FROM o
         WHERE t.id = o.id AND t.run_id = o.run_id
        RETURNING t.id
    )
    SELECT array_agg(upd.id ORDER BY upd.id) INTO written FROM upd;
    PERFORM set_config('long_task.node_write', 'off', true);
    IF written IS NOT NULL THEN
        PERFORM pg_notify('long_task_output',
                          CASE WHEN cardinality(written) <= 700 THEN array_to_string(written, ' ') ELSE '*' END);
        RETURN QUERY SELECT unnest(written);
    END IF;
END
$$;
