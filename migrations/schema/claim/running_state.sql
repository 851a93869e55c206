-- A node's view of its running tasks: which of them it must stop (cancelled, deleted, reassigned,
-- finished by someone else). Ids it passes that are missing from the result were deleted.
CREATE OR REPLACE FUNCTION long_task.running_state(p_worker_id bigint, p_ids bigint[], p_run_ids uuid[])
RETURNS TABLE (id bigint, run_id uuid, verdict text)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.run_id,
           CASE
               WHEN t.id IS NULL THEN 'deleted'
               WHEN t.run_id IS DISTINCT FROM r.run_id OR t.worker_id IS DISTINCT FROM p_worker_id THEN 'fenced'
               WHEN t.state_id = 'AC' THEN 'cancel'
               WHEN t.state_id <> 'AE' THEN 'fenced'
               ELSE 'run'
           END
      FROM unnest(p_ids, p_run_ids) AS r(id, run_id)
      LEFT JOIN long_task.task t ON t.id = r.id
$$;
