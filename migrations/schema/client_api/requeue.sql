-- Queues a final or draft task again, the one re-queue of every client: a new attempt from a
-- clean outcome (the state machine clears it). A waiting task is left alone; a running one is
-- refused (cancel it first). Returns the state before and after; after is NULL when refused, and
-- no row comes back when there is no such task. The plain-SQL form is the reference's
-- UPDATE long_task.task SET state_id = 'AW', worker_id = NULL WHERE id = <id> AND state_id LIKE 'C%'.
-- A change is recorded as an event of kind 'requeue' (long_task.record_change: 'before -> after
-- by <login role>');
-- the plain UPDATE records none.
CREATE OR REPLACE FUNCTION long_task.requeue(p_id bigint)
RETURNS TABLE (before char(2), after char(2))
LANGUAGE plpgsql AS $$
DECLARE
    v_before char(2);
    v_after char(2);
BEGIN
    SELECT t.state_id INTO v_before FROM long_task.task t WHERE t.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_before = 'AW' THEN
        v_after := v_before;
    ELSIF v_before IN ('DR', 'CS', 'CF', 'CC') THEN
        UPDATE long_task.task t SET state_id = 'AW' WHERE t.id = p_id
        RETURNING t.state_id INTO v_after;
    END IF;
    IF v_after IS DISTINCT FROM v_before AND v_after IS NOT NULL THEN
        -- who asked, in the event log (the console's and `pgtaskd show`'s history)
        PERFORM long_task.record_change('requeue', t.group_id, t.id, NULL, t.run_id,
                                        format('%s -> %s', v_before, v_after))
           FROM long_task.task t WHERE t.id = p_id;
    END IF;
    RETURN QUERY SELECT v_before, v_after;
END
$$;
