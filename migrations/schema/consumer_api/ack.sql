-- Acknowledges a consumed task: CS with its result (CC if it was cancelled meanwhile). With
-- p_run_id (from consume) the write is fenced: an ack after the lease expired and the task was
-- handed to another consumer changes nothing. Returns the new state, NULL when nothing changed.
CREATE OR REPLACE FUNCTION long_task.ack(p_id bigint, p_result jsonb DEFAULT NULL, p_run_id uuid DEFAULT NULL)
RETURNS char(2)
LANGUAGE sql AS $$
    SELECT c.state_id
      FROM long_task.task t,
           LATERAL long_task.complete_runs(ARRAY[t.id], ARRAY[t.run_id], ARRAY['CS'], ARRAY[NULL::text],
                                           ARRAY[NULL::integer], ARRAY[NULL::integer], ARRAY[NULL::text],
                                           ARRAY[NULL::text], ARRAY[p_result], ARRAY[NULL::timestamptz]) c
     WHERE t.id = p_id AND t.state_id IN ('AE', 'AC') AND (p_run_id IS NULL OR t.run_id = p_run_id)
       -- a task of a group the login role may not use (long_task.group_access) is not there for it
       AND coalesce(t.group_id = ANY (long_task.accessible_groups(session_user)), true)
$$;
