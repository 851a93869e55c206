-- Deletes the ready-ring entries given as (slot, ctid) pairs, one DELETE per slot, and returns
-- the pairs it deleted: an entry another claim deleted first is missing from the answer, and
-- only what this call deleted may be taken. Shared by long_task.take_ready and
-- long_task.take_fair. The slot is a table of its own: one static DELETE per slot (planned once
-- per session, a TID scan), chosen by a CASE, not a statement built and planned at every call.
-- The generic plan is forced: left to choose, the plan cache planned the DELETE at every call.
CREATE OR REPLACE FUNCTION long_task.delete_ready_entries(
    p_slots smallint[], p_tids tid[], OUT deleted_slots smallint[], OUT deleted_tids tid[])
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    slot smallint;
    tids tid[];
    gone tid[];
BEGIN
    deleted_slots := '{}';
    deleted_tids := '{}';
    IF coalesce(cardinality(p_slots), 0) = 0 THEN
        RETURN;
    END IF;
    FOREACH slot IN ARRAY ARRAY(SELECT DISTINCT x FROM unnest(p_slots) x) LOOP
        tids := ARRAY(SELECT u.t FROM unnest(p_slots, p_tids) AS u(s, t) WHERE u.s = slot);
        CASE slot
            WHEN 0 THEN
                WITH d AS (DELETE FROM long_task.ready_0 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 1 THEN
                WITH d AS (DELETE FROM long_task.ready_1 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 2 THEN
                WITH d AS (DELETE FROM long_task.ready_2 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 3 THEN
                WITH d AS (DELETE FROM long_task.ready_3 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 4 THEN
                WITH d AS (DELETE FROM long_task.ready_4 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 5 THEN
                WITH d AS (DELETE FROM long_task.ready_5 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 6 THEN
                WITH d AS (DELETE FROM long_task.ready_6 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
            WHEN 7 THEN
                WITH d AS (DELETE FROM long_task.ready_7 r WHERE r.ctid = ANY (tids) RETURNING r.ctid)
                SELECT array_agg(d.ctid) INTO gone FROM d;
        END CASE;
        deleted_slots := deleted_slots || array_fill(slot, ARRAY[coalesce(cardinality(gone), 0)]);
        deleted_tids := deleted_tids || coalesce(gone, '{}');
    END LOOP;
END
$$;
