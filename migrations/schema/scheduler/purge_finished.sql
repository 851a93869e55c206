-- Deletes, in one batch, final tasks of a group older than its retention (by `finished`; never a
-- task that still has a schedule), and attempt history older than its history_retention.
-- Returns the rows deleted and the seconds until the next task falls out of retention
-- (0: a full batch, go again; NULL: retention off or nothing final).
CREATE OR REPLACE FUNCTION long_task.purge_finished(p_group_id integer)
RETURNS TABLE (deleted integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    s long_task.group_settings;
    batch integer;
    n_tasks integer := 0;
    n_runs integer := 0;
    next_in double precision;
BEGIN
    SELECT * INTO s FROM long_task.group_settings g WHERE g.group_id = p_group_id;
    batch := coalesce(s.purge_batch, 1000);
    IF s.retention IS NOT NULL THEN
        DELETE FROM long_task.task t
         WHERE t.id IN (SELECT x.id FROM long_task.task x
                         WHERE x.group_id = p_group_id AND x.state_id IN ('CS', 'CF', 'CC')
                           AND x.finished < now() - s.retention AND x.next_start IS NULL
                         ORDER BY x.finished
                         LIMIT batch
                           FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS n_tasks = ROW_COUNT;
        SELECT extract(epoch FROM min(x.finished) + s.retention - now()) INTO next_in
          FROM long_task.task x
         WHERE x.group_id = p_group_id AND x.state_id IN ('CS', 'CF', 'CC') AND x.next_start IS NULL;
    END IF;
    IF s.history_retention IS NOT NULL THEN
        DELETE FROM long_task.task_run r
         WHERE r.id IN (SELECT x.id FROM long_task.task_run x
                         WHERE x.group_id = p_group_id AND x.finished < now() - s.history_retention
                         ORDER BY x.finished
                         LIMIT batch);
        GET DIAGNOSTICS n_runs = ROW_COUNT;
        next_in := least(next_in, (SELECT extract(epoch FROM min(x.finished) + s.history_retention - now())
                                     FROM long_task.task_run x WHERE x.group_id = p_group_id));
    END IF;
    IF n_tasks >= batch OR n_runs >= batch THEN
        next_in := 0;
    END IF;
    RETURN QUERY SELECT n_tasks + n_runs, CASE WHEN next_in IS NOT NULL THEN greatest(next_in, 0) END;
END
$$;
