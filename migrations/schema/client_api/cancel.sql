-- Cancels a task, the one cancel of every client: a draft or waiting task ends CC at once (error
-- 'cancelled before start'), a running one becomes AC (its node kills the process group and
-- writes CC; a SQL consumer's ack then ends it CC), one already cancelling is left alone.
-- Returns the state before and after; after is NULL when the task is final (refused), and no
-- row comes back when there is no such task. The plain-SQL form is the reference's
-- UPDATE long_task.task SET state_id = 'AC' WHERE id = <id> AND state_id LIKE 'A%'.
-- A change is recorded as an event of kind 'cancel' (long_task.record_change: 'before -> after
-- by <login role>');
-- the plain UPDATE records none.
CREATE OR REPLACE FUNCTION long_task.cancel(p_id bigint)
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
    IF v_before = 'AC' THEN
        v_after := v_before;
    ELSIF v_before IN ('DR', 'AW', 'AE') THEN
        UPDATE long_task.task t
           SET state_id = CASE WHEN v_before = 'DR' THEN 'CC' ELSE 'AC' END,
               error = CASE WHEN v_before = 'DR' THEN 'cancelled before start' ELSE t.error END
         WHERE t.id = p_id
        RETURNING t.state_id INTO v_after;
    END IF;
    IF v_after IS DISTINCT FROM v_before AND v_after IS NOT NULL THEN
        -- who asked, in the event log (the console's and `pgtaskd show`'s history)
        PERFORM long_task.record_change('cancel', t.group_id, t.id, NULL, t.run_id,
                                        format('%s -> %s', v_before, v_after))
           FROM long_task.task t WHERE t.id = p_id;
    END IF;
    RETURN QUERY SELECT v_before, v_after;
END
$$;
