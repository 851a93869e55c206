-- Fires due schedules, expires leases, applies retention, makes retries and delayed tasks that
-- came due since the previous tick claimable (long_task.promote_due; p_since: the db_now it
-- returned, NULL for a full pass) and wakes the group's nodes and consumers (NOTIFY 'wake') for
-- them, and for the next token of a rate-limited group (long_task.rate_wake). Returns what it did, the database time, and the seconds until the next due moment it
-- knows of (NULL: none; lease deadlines also come as notifications). (The ready ring is turned
-- apart from the tick: long_task.turn_ready.)
CREATE OR REPLACE FUNCTION long_task.scheduler_tick(p_group_id integer, p_since timestamptz DEFAULT NULL)
RETURNS TABLE (fired integer, expired integer, purged integer, woken integer, db_now timestamptz,
               next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    e record;
    p record;
    n_woken integer;
    next_retry double precision;
BEGIN
    SELECT * INTO f FROM long_task.fire_schedules(p_group_id);
    SELECT * INTO e FROM long_task.expire_leases(p_group_id, p_since);
    SELECT * INTO p FROM long_task.purge_finished(p_group_id);
    n_woken := long_task.promote_due(p_group_id, p_since);
    IF n_woken > 0 THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'wake');
    END IF;
    -- the next retry to come, or one due that promote_due left (a full batch, a row another
    -- session held locked) within what the next tick looks at: run_after values after this
    -- tick's time - 5 s (older ones wait for the next full pass)
    SELECT extract(epoch FROM min(t.run_after) - now()) INTO next_retry
      FROM long_task.task t
     WHERE t.group_id = p_group_id AND t.state_id = 'AW' AND t.run_after IS NOT NULL
       AND t.run_after > now() - interval '5 seconds';
    IF next_retry <= 0 THEN
        next_retry := 0.1; -- left due: again shortly, not in a tight loop
    END IF;
    -- a rate-limited group whose bucket ran dry: woken when the next token is due
    next_retry := least(f.next_due_in, e.next_due_in, p.next_due_in, next_retry,
                        long_task.rate_wake(p_group_id));
    -- something already due (a full batch, a row locked by another session): again soon, not in a
    -- tight loop
    RETURN QUERY SELECT f.fired, e.expired, p.deleted, n_woken, now(),
                        CASE WHEN next_retry IS NOT NULL THEN greatest(next_retry, 0.01) END;
END
$$;
