-- Raises the error for a task state code that a write may not set: unknown (no such row in
-- long_task.task_state), not a start state (p_from NULL: an insert) or not reachable from p_from.
CREATE OR REPLACE FUNCTION long_task.reject_task_state(p_to char(2), p_from char(2), p_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    allowed char(2)[] := long_task.legal_next_states(p_from);
BEGIN
    IF p_to IS NULL OR NOT EXISTS (SELECT 1 FROM long_task.task_state s WHERE s.id = p_to) THEN
        RAISE EXCEPTION 'unknown task state %', quote_nullable(p_to)
            USING ERRCODE = 'check_violation',
                  HINT = 'known states: DR draft, AW waiting, AE executing, AC cancel requested, '
                      || 'CS succeeded, CF failed, CC cancelled';
    END IF;
    IF p_from IS NULL THEN
        RAISE EXCEPTION 'a new task must start in state DR or AW, not %', p_to
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'illegal task state transition % -> % for task %', p_from, p_to, p_id
        USING ERRCODE = 'check_violation',
              HINT = format('from %s a task may go to: %s', p_from, array_to_string(allowed, ', '));
END
$$;
