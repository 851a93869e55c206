-- Deletes the ready-ring entries given as (slot, ctid) pairs, one DELETE per slot, and returns
-- the pairs it deleted: an entry another claim deleted first is missing from the answer, and
-- only what this call deleted may be taken. Shared by long_task.take_ready and
-- long_task.take_fair (the slot is a table of its own: a dynamic statement per slot).
CREATE OR REPLACE FUNCTION long_task.delete_ready_entries(
    p_slots smallint[], p_tids tid[], OUT deleted_slots smallint[], OUT deleted_tids tid[])
LANGUAGE plpgsql AS $$
DECLARE
    slot smallint;
    tids tid[];
BEGIN
    deleted_slots := '{}';
    deleted_tids := '{}';
    FOREACH slot IN ARRAY ARRAY(SELECT DISTINCT x FROM unnest(p_slots) x) LOOP
        EXECUTE format(
            'WITH d AS (DELETE FROM long_task.ready_%s r WHERE r.ctid = ANY ($1) RETURNING r.ctid)
             SELECT array_agg(d.ctid) FROM d', slot)
          INTO tids
          USING ARRAY(SELECT u.t FROM unnest(p_slots, p_tids) AS u(s, t) WHERE u.s = slot);
        deleted_slots := deleted_slots || array_fill(slot, ARRAY[coalesce(cardinality(tids), 0)]);
        deleted_tids := deleted_tids || coalesce(tids, '{}');
    END LOOP;
END
$$;
