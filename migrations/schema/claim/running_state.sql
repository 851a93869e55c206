-- A node's view of its running tasks: which of them it must stop (cancelled, deleted, reassigned,
-- finished by someone else, handed over). Ids it passes that are missing from the result were
-- deleted. A run taken away by a hand-over (long_task.hand_over_node: its 'handed_over' event
-- names the run) is 'handed_over' rather than 'fenced': the same kill, told apart in the node's
-- log and metrics.
CREATE OR REPLACE FUNCTION long_task.running_state(p_worker_id bigint, p_ids bigint[], p_run_ids uuid[])
RETURNS TABLE (id bigint, run_id uuid, verdict text)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.run_id,
           CASE
               WHEN t.id IS NULL THEN 'deleted'
               WHEN t.run_id IS NOT DISTINCT FROM r.run_id AND t.worker_id IS NOT DISTINCT FROM p_worker_id
                    AND t.state_id IN ('AE', 'AC')
                   THEN CASE WHEN t.state_id = 'AC' THEN 'cancel' ELSE 'run' END
               WHEN EXISTS (SELECT 1 FROM long_task.event e
                             WHERE e.task_id = r.id AND e.run_id = r.run_id AND e.kind = 'handed_over')
                   THEN 'handed_over'
               ELSE 'fenced'
           END
      FROM unnest(p_ids, p_run_ids) AS r(id, run_id)
      LEFT JOIN long_task.task t ON t.id = r.id
$$;
