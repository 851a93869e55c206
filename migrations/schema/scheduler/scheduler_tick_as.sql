-- long_task.scheduler_tick under the coordinator's term: fired = -1 when the term is not (or no
-- longer) this node's, and then nothing happened. A share lock on the coordinator row holds off a
-- new election until this tick commits.
CREATE OR REPLACE FUNCTION long_task.scheduler_tick_as(p_group_id integer, p_worker_id bigint, p_term bigint,
                                            p_since timestamptz DEFAULT NULL)
RETURNS TABLE (fired integer, expired integer, purged integer, woken integer, db_now timestamptz,
               next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    PERFORM 1 FROM long_task.coordinator c
      WHERE c.group_id = p_group_id AND c.term = p_term AND c.worker_id = p_worker_id
        FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT -1, 0, 0, 0, now(), NULL::double precision;
        RETURN;
    END IF;
    SELECT * INTO t FROM long_task.scheduler_tick(p_group_id, p_since);
    IF t.fired > 0 THEN
        INSERT INTO long_task.event (group_id, term, by_worker_id, kind, detail)
        VALUES (p_group_id, p_term, p_worker_id, 'fired', t.fired || ' schedule(s)');
    END IF;
    RETURN QUERY SELECT t.fired, t.expired, t.purged, t.woken, t.db_now, t.next_due_in;
END
$$;
