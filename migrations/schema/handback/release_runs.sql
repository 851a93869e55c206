-- A node that fenced itself (cut off past its heartbeat timeout) killed these runs: hand them back
-- like a lost node's, unless the coordinator already did (run_id guard).
CREATE OR REPLACE FUNCTION long_task.release_runs(p_worker_id bigint, p_ids bigint[], p_run_ids uuid[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ids bigint[];
    run_ids uuid[];
    n integer := 0;
BEGIN
    SELECT coalesce(array_agg(i.id), '{}'), coalesce(array_agg(i.run_id), '{}') INTO ids, run_ids
      FROM unnest(p_ids, p_run_ids) AS i(id, run_id)
      JOIN long_task.task t ON t.id = i.id AND t.worker_id = p_worker_id;
    FOR r IN
        SELECT l.id, l.run_id, l.state_id, t.group_id
          FROM long_task.requeue_lost(ids, run_ids, 'worker lost') l
          JOIN long_task.task t ON t.id = l.id
    LOOP
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        VALUES (r.group_id, p_worker_id, 'released', p_worker_id, r.id, r.run_id,
                'self-fenced; now ' || r.state_id);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
