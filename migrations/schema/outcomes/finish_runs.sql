-- complete_runs without results or retry times (the outcome write of the first schema version).
CREATE OR REPLACE FUNCTION long_task.finish_runs(
    p_ids bigint[], p_run_ids uuid[], p_states text[], p_errors text[],
    p_exit_codes integer[], p_exit_signals integer[], p_stdout text[], p_stderr text[])
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE sql AS $$
    SELECT c.id, c.state_id
      FROM long_task.complete_runs(p_ids, p_run_ids, p_states, p_errors, p_exit_codes, p_exit_signals,
                                   p_stdout, p_stderr, NULL::jsonb[], NULL::timestamptz[]) c
$$;
