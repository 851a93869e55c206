-- The cron rows of a group whose next_start has come (at most p_limit, earliest first), with the
-- database's time: the Scheduler computes what each does (src/cron.rs) and hands that to
-- long_task.fire_crons, which fires and moves each row only if it is still as read here. Reads
-- only: a coordinator that dies after this changes nothing, and its successor reads the rows again.
CREATE OR REPLACE FUNCTION long_task.due_crons(p_group_id integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (id bigint, next_start timestamptz, shed_cron text, shed_timezone text, db_now timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.next_start, t.shed_cron, t.shed_timezone, now()
      FROM long_task.task t
     WHERE t.group_id = p_group_id AND t.next_start IS NOT NULL AND t.next_start <= now()
       AND t.shed_cron IS NOT NULL
     ORDER BY t.next_start
     LIMIT p_limit
$$;
