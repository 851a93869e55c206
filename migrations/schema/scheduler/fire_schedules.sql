-- Fire every due period schedule of a group once (long_task.fire_schedule) and move it to its
-- next planned time (long_task.next_planned). Rows are locked SKIP LOCKED, so two nodes firing at
-- once fire each schedule once. Cron rows (shed_cron) are the Scheduler's: it computes their times
-- and fires them through long_task.due_crons and long_task.fire_crons.
-- Returns the number fired and the seconds until the next due schedule of either rule (NULL: none).
CREATE OR REPLACE FUNCTION long_task.fire_schedules(p_group_id integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (fired integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    r long_task.task;
    n integer := 0;
BEGIN
    FOR r IN
        SELECT t.* FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.next_start IS NOT NULL AND t.next_start <= now()
           AND t.shed_cron IS NULL
         ORDER BY t.next_start
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM long_task.fire_schedule(r, r.next_start);
        UPDATE long_task.task
           SET next_start = long_task.next_planned(r.next_start, r.shed_period_id, r.shed_period_count, now())
         WHERE id = r.id;
        n := n + 1;
    END LOOP;
    RETURN QUERY
        SELECT n, extract(epoch FROM min(t.next_start) - now())::double precision
          FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.next_start IS NOT NULL;
END
$$;
