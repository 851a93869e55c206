-- Ends attempts: each outcome is written only where the task is still AE/AC under that run_id
-- (fencing). A run whose task was cancelled meanwhile ends CC. A failure (CF) with attempts left
-- goes back to AW with run_after = now() + retry_delay (or p_retry_at when given); the last
-- attempt's failure ends CF. Every ended attempt gets a long_task.task_run row.
-- Each outcome's task is looked up through the primary key and locked (FOR UPDATE: it is then ours
-- until the end of the transaction, and a concurrent cancel is seen, so the update needs no state
-- test of its own), and the history rows take the attempt's old values from the update's
-- RETURNING. Returns the rows written with their new state.
-- The statement keeps a generic plan, made once per session: left to choose, the plan cache
-- found the generic plan's estimate over the arrays worse than a custom plan's and planned the
-- statement at every call (about 0.5 ms, more than a one-outcome batch costs to run; its shape
-- never changes).
-- SET enable_seqscan = off, jit = off: PL/pgSQL plans its statements once per session and keeps
-- them; planned while long_task.task was small (a fresh database, a node started on an empty
-- queue), a lookup of rows by id would stay a scan of the whole table, once per call, however
-- large the table grew. Off, the plan takes the indexes at any size (and a plan costed past
-- jit_above_cost by the disabled paths is not JIT-compiled at every call).
CREATE OR REPLACE FUNCTION long_task.complete_runs(
    p_ids bigint[], p_run_ids uuid[], p_states text[], p_errors text[],
    p_exit_codes integer[], p_exit_signals integer[], p_stdout text[], p_stderr text[],
    p_results jsonb[], p_retry_at timestamptz[])
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM set_config('long_task.node_write', 'on', true);
    RETURN QUERY
    WITH o AS MATERIALIZED (
        SELECT u.*, old.worker_id AS old_worker_id, old.started AS old_started, old.attempt AS old_attempt
          FROM unnest(p_ids, p_run_ids, p_states, p_errors, p_exit_codes, p_exit_signals, p_stdout, p_stderr,
                      p_results, p_retry_at)
               AS u(id, run_id, state, error, exit_code, exit_signal, stdout_tail, stderr_tail, result, retry_at)
         CROSS JOIN LATERAL (
                -- the state is tested outside (LIMIT keeps it there): inside, it would steer the
                -- lookup to the partial index of running rows, scanned whole for each outcome
                SELECT x.worker_id, x.started, x.attempt, x.state_id
                  FROM long_task.task x
                 WHERE x.id = u.id AND x.run_id = u.run_id
                   FOR UPDATE
                 LIMIT 1) old
         WHERE old.state_id IN ('AE', 'AC')
    ), upd AS (
        -- no test of t.state_id here: the planner would size t by it (a handful of running rows
        -- in stale statistics) and loop over the whole batch for each of them
        UPDATE long_task.task t
           SET state_id = CASE WHEN t.state_id = 'AC' THEN 'CC'
                               WHEN o.state = 'CF' AND t.attempt < t.max_attempts THEN 'AW'
                               ELSE o.state END,
               run_after = CASE WHEN t.state_id <> 'AC' AND o.state = 'CF' AND t.attempt < t.max_attempts
                                THEN coalesce(o.retry_at,
                                              now() + make_interval(secs => long_task.retry_delay(
                                                  t.group_id, t.attempt, t.retry_base, t.retry_max, t.retry_jitter)))
                           END,
               error = CASE WHEN t.state_id = 'AC' AND o.state <> 'CC' THEN 'cancelled' ELSE o.error END,
               exit_code = o.exit_code, exit_signal = o.exit_signal,
               stdout_tail = o.stdout_tail, stderr_tail = o.stderr_tail,
               result = o.result, lease_until = NULL, finished = now()
          FROM o
         WHERE t.id = o.id AND t.run_id = o.run_id
        RETURNING t.id, t.group_id, t.state_id, t.run_after, t.error, t.exit_code, t.exit_signal,
                  t.stdout_tail, t.stderr_tail, t.result, t.finished,
                  o.run_id AS old_run_id, o.old_attempt, o.old_worker_id, o.old_started
    ), hist AS (
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        exit_code, exit_signal, stdout_tail, stderr_tail, result,
                                        started, finished, retry_at)
        SELECT upd.id, upd.group_id, upd.old_run_id, upd.old_attempt, upd.old_worker_id,
               CASE WHEN upd.state_id = 'AW' THEN 'CF' ELSE upd.state_id END, upd.error,
               upd.exit_code, upd.exit_signal, upd.stdout_tail, upd.stderr_tail, upd.result,
               upd.old_started, upd.finished, CASE WHEN upd.state_id = 'AW' THEN upd.run_after END
          FROM upd
    )
    SELECT upd.id, upd.state_id FROM upd;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;
