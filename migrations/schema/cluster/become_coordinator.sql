-- Called by the session that just took the group lock: a new term, in one statement.
CREATE OR REPLACE FUNCTION long_task.become_coordinator(p_group_id integer, p_worker_id bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_term bigint;
BEGIN
    IF NOT long_task.holds_group_lock(p_group_id) THEN
        RAISE EXCEPTION 'this session does not hold the coordinator lock of group %', p_group_id
            USING ERRCODE = 'lock_not_available';
    END IF;
    INSERT INTO long_task.coordinator AS c (group_id, term, worker_id, elected_at)
    VALUES (p_group_id, 1, p_worker_id, now())
    ON CONFLICT (group_id) DO UPDATE
       SET term = c.term + 1, worker_id = EXCLUDED.worker_id, elected_at = now()
    RETURNING c.term INTO new_term;
    INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id)
    VALUES (p_group_id, new_term, p_worker_id, 'elected', p_worker_id);
    RETURN new_term;
END
$$;
