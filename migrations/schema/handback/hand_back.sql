-- The one rule for runs their node abandoned: the node died or hung (the coordinator hands its
-- runs back), it restarted or stopped with runs in hand (the node itself, at start-up or
-- shutdown), or it fenced itself and killed them (the node, once it reaches the database again).
--   AE: back to AW while the task has lost re-runs left (its max_lost_reruns, else the group's,
--       else 1), counting one (lost_reruns + 1), with p_reason as error; pinned tasks stay
--       pinned, a new run_id and attempt + 1 come with the next claim. Else CF 'worker lost'.
--   AC: (a cancel was requested) CC, error 'cancelled (<p_reason>)'.
-- Every ended attempt gets its long_task.task_run row and an event (requeued, lost_failed,
-- lost_cancelled; detail p_reason; term p_term when a coordinator acts). Only runs of p_worker_id
-- still AE/AC change: the given (p_ids, p_run_ids) pairs, or every one of the node's runs (in
-- p_group_id when given) when p_ids is NULL. Returns each run handed back, its new state and the
-- event kind.
-- p_lost = false (long_task.hand_over_node: an operator took the run away, it was not lost): an
-- AE run goes back to AW whatever its lost re-runs, counting none, and its attempt is not
-- charged (attempt - 1, so the next claim runs it under the same attempt number, with a new
-- run_id); its history row is CC with error p_reason, its event 'handed_over'.
CREATE OR REPLACE FUNCTION long_task.hand_back(
    p_worker_id bigint, p_reason text, p_by_worker_id bigint,
    p_ids bigint[] DEFAULT NULL, p_run_ids uuid[] DEFAULT NULL,
    p_group_id integer DEFAULT NULL, p_term bigint DEFAULT NULL, p_lost boolean DEFAULT true)
RETURNS TABLE (task_id bigint, run_id uuid, state_id char(2), kind text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH lost AS (
        SELECT t.id, t.run_id, t.attempt, t.started, t.state_id AS old_state,
               NOT p_lost OR t.lost_reruns < coalesce(t.max_lost_reruns, g.max_lost_reruns, 1) AS rerun
          FROM long_task.task t
          LEFT JOIN long_task.group_settings g ON g.group_id = t.group_id
         WHERE t.worker_id = p_worker_id AND t.state_id IN ('AE', 'AC')
           AND (p_group_id IS NULL OR t.group_id = p_group_id)
           AND (p_ids IS NULL
                OR (t.id, t.run_id) IN (SELECT r.id, r.run_id FROM unnest(p_ids, p_run_ids) AS r(id, run_id)))
           FOR UPDATE OF t
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = CASE WHEN lost.old_state = 'AC' THEN 'CC' WHEN lost.rerun THEN 'AW' ELSE 'CF' END,
               lost_reruns = t.lost_reruns + CASE WHEN lost.old_state = 'AE' AND lost.rerun AND p_lost THEN 1 ELSE 0 END,
               attempt = t.attempt - CASE WHEN lost.old_state = 'AE' AND NOT p_lost THEN 1 ELSE 0 END,
               error = CASE WHEN lost.old_state = 'AC' THEN 'cancelled (' || p_reason || ')'
                            WHEN lost.rerun THEN p_reason
                            ELSE 'worker lost' END
          FROM lost
         WHERE t.id = lost.id
        RETURNING t.id, t.group_id, t.state_id, t.error, lost.run_id AS lost_run_id, lost.attempt,
                  lost.started, lost.old_state,
                  CASE WHEN t.state_id = 'AW' AND NOT p_lost THEN 'handed_over'
                       WHEN t.state_id = 'AW' THEN 'requeued' WHEN t.state_id = 'CC' THEN 'lost_cancelled'
                       ELSE 'lost_failed' END AS kind
    ), hist AS (
        -- the abandoned attempt ends in the attempt history like any other
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        started, retry_at)
        SELECT upd.id, upd.group_id, upd.lost_run_id, upd.attempt, p_worker_id,
               CASE WHEN upd.old_state = 'AC' OR NOT p_lost THEN 'CC' ELSE 'CF' END,
               CASE WHEN upd.old_state = 'AC' THEN upd.error ELSE p_reason END,
               upd.started, CASE WHEN upd.state_id = 'AW' THEN now() END
          FROM upd
    ), ev AS (
        INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, task_id, run_id, detail)
        SELECT upd.group_id, p_term, p_by_worker_id, upd.kind, p_worker_id, upd.id, upd.lost_run_id, p_reason
          FROM upd
    )
    SELECT upd.id, upd.lost_run_id, upd.state_id, upd.kind FROM upd;
END
$$;
