-- Hands back running tasks whose node was lost: AE → AW while lost re-runs remain (a new run_id
-- comes with the next claim, attempt + 1), else CF 'worker lost'; pinned tasks stay pinned.
-- Only rows still AE under the given run_ids change. Returns each row's old run_id and new state.
CREATE OR REPLACE FUNCTION long_task.requeue_lost(p_ids bigint[], p_run_ids uuid[], p_reason text)
RETURNS TABLE (id bigint, run_id uuid, state_id char(2))
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT t.id, t.run_id, t.attempt, t.worker_id, t.started,
               t.lost_reruns < coalesce(t.max_lost_reruns, g.max_lost_reruns, 1) AS rerun
          FROM long_task.task t
          JOIN unnest(p_ids, p_run_ids) AS r(id, run_id) ON r.id = t.id AND r.run_id = t.run_id
          LEFT JOIN long_task.group_settings g ON g.group_id = t.group_id
         WHERE t.state_id = 'AE'
           FOR UPDATE OF t
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = CASE WHEN lost.rerun THEN 'AW' ELSE 'CF' END,
               lost_reruns = t.lost_reruns + CASE WHEN lost.rerun THEN 1 ELSE 0 END,
               error = CASE WHEN lost.rerun THEN p_reason || ' (re-queued)' ELSE p_reason END
          FROM lost
         WHERE t.id = lost.id
        RETURNING t.id, t.group_id, lost.run_id, lost.attempt, lost.worker_id, lost.started, t.state_id
    ), hist AS (
        -- the lost attempt ends in the attempt history like any other (CF, retried when re-queued)
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        started, retry_at)
        SELECT upd.id, upd.group_id, upd.run_id, upd.attempt, upd.worker_id, 'CF', p_reason,
               upd.started, CASE WHEN upd.state_id = 'AW' THEN now() END
          FROM upd
    )
    SELECT upd.id, upd.run_id, upd.state_id FROM upd
$$;
