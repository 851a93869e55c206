-- Fires and moves due cron rows as the Scheduler computed them from long_task.due_crons, under
-- the coordinator's term, in one transaction: for row p_ids[i], read with next_start p_planned[i],
-- shed_cron p_crons[i] and shed_timezone p_timezones[i], fire once for the slot p_slots[i]
-- (long_task.fire_schedule; NULL: no slot came yet, nothing fires) and set next_start to
-- p_nexts[i]. A row that changed since it was read (fired by someone else, rescheduled, its
-- expression edited) or is locked is left alone: the next tick reads it again. So a slot fires once
-- across the cluster whoever dies when. p_refusals[i] not NULL: the expression or zone cannot be
-- evaluated (the Scheduler's parser refused it): recorded as a `schedule_refused` event with that
-- reason, and next_start cleared (shed_cron stays, for the owner to fix).
-- Returns the number fired; -1 when the term is not (or no longer) this node's (nothing happened).
CREATE OR REPLACE FUNCTION long_task.fire_crons(
    p_group_id integer, p_worker_id bigint, p_term bigint, p_ids bigint[], p_planned timestamptz[],
    p_crons text[], p_timezones text[], p_slots timestamptz[], p_nexts timestamptz[],
    p_refusals text[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r long_task.task;
    i integer;
    n integer := 0;
BEGIN
    PERFORM 1 FROM long_task.coordinator c
      WHERE c.group_id = p_group_id AND c.term = p_term AND c.worker_id = p_worker_id
        FOR SHARE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        SELECT t.* INTO r FROM long_task.task t
         WHERE t.id = p_ids[i] AND t.group_id = p_group_id AND t.next_start = p_planned[i]
           AND t.shed_cron = p_crons[i] AND t.shed_timezone IS NOT DISTINCT FROM p_timezones[i]
           FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF p_refusals[i] IS NOT NULL THEN
            INSERT INTO long_task.event (group_id, term, by_worker_id, kind, task_id, detail)
            VALUES (p_group_id, p_term, p_worker_id, 'schedule_refused', r.id, p_refusals[i]);
            UPDATE long_task.task SET next_start = NULL WHERE id = r.id;
            CONTINUE;
        END IF;
        IF p_slots[i] IS NOT NULL THEN
            PERFORM long_task.fire_schedule(r, p_slots[i]);
            n := n + 1;
        END IF;
        UPDATE long_task.task SET next_start = p_nexts[i] WHERE id = r.id;
    END LOOP;
    IF n > 0 THEN
        INSERT INTO long_task.event (group_id, term, by_worker_id, kind, detail)
        VALUES (p_group_id, p_term, p_worker_id, 'fired', n || ' cron schedule(s)');
    END IF;
    RETURN n;
END
$$;
