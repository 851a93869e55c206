-- Tasks a node left behind when it stopped or died: cancel requests end CC, running tasks go back
-- to the queue (pinned ones stay pinned); every move is recorded in the event log. Returns how
-- many of each.
CREATE OR REPLACE FUNCTION long_task.recover_worker(p_worker_id bigint, p_reason text)
RETURNS TABLE (requeued bigint, cancelled bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n_cancelled bigint;
    n_requeued bigint;
BEGIN
    WITH c AS (
        UPDATE long_task.task t
           SET state_id = 'CC', error = 'cancelled (' || p_reason || ')'
         WHERE t.worker_id = p_worker_id AND t.state_id = 'AC'
        RETURNING t.id, t.run_id, t.group_id
    ), e AS (
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        SELECT c.group_id, p_worker_id, 'recovered', p_worker_id, c.id, c.run_id, p_reason || ': now CC' FROM c
        RETURNING 1
    )
    SELECT count(*) INTO n_cancelled FROM e;
    WITH r AS (
        SELECT t.id, t.run_id, t.group_id, t.attempt, t.started FROM long_task.task t
         WHERE t.worker_id = p_worker_id AND t.state_id = 'AE'
           FOR UPDATE
    ), u AS (
        UPDATE long_task.task t
           SET state_id = 'AW', worker_id = CASE WHEN t.pinned THEN t.worker_id END,
               error = p_reason
          FROM r
         WHERE t.id = r.id
        RETURNING t.id
    ), e AS (
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        SELECT r.group_id, p_worker_id, 'recovered', p_worker_id, r.id, r.run_id, p_reason || ': now AW'
          FROM r JOIN u ON u.id = r.id
        RETURNING 1
    ), hist AS (
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        started, retry_at)
        SELECT r.id, r.group_id, r.run_id, r.attempt, p_worker_id, 'CF', p_reason, r.started, now()
          FROM r JOIN u ON u.id = r.id
    )
    SELECT count(*) INTO n_requeued FROM e;
    RETURN QUERY SELECT n_requeued, n_cancelled;
END
$$;
