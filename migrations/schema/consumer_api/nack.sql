-- Reports a consumed task as failed: back to AW at p_retry_at (NULL: now + retry_delay) while
-- attempts remain, else CF with the error. Fenced by p_run_id like ack. Returns the new state.
CREATE OR REPLACE FUNCTION long_task.nack(p_id bigint, p_error text DEFAULT NULL, p_retry_at timestamptz DEFAULT NULL,
                               p_run_id uuid DEFAULT NULL)
RETURNS char(2)
LANGUAGE sql AS $$
    SELECT c.state_id
      FROM long_task.task t,
           LATERAL long_task.complete_runs(ARRAY[t.id], ARRAY[t.run_id], ARRAY['CF'], ARRAY[p_error],
                                           ARRAY[NULL::integer], ARRAY[NULL::integer], ARRAY[NULL::text],
                                           ARRAY[NULL::text], ARRAY[NULL::jsonb], ARRAY[p_retry_at]) c
     WHERE t.id = p_id AND t.state_id IN ('AE', 'AC') AND (p_run_id IS NULL OR t.run_id = p_run_id)
       -- a task of a group the login role may not use (long_task.group_access) is not there for it
       AND coalesce(t.group_id = ANY (long_task.accessible_groups(session_user)), true)
$$;
