-- The live slots of the ready ring, oldest first: those of the generations ready_head ..
-- ready_gen. Claims read only these (a retired slot is about to be emptied). PL/pgSQL: planned
-- once per session, not on every call.
CREATE OR REPLACE FUNCTION long_task.ready_live_slots() RETURNS smallint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    head bigint;
    gen bigint;
    slots smallint[] := '{}';
BEGIN
    SELECT h.last_value INTO head FROM long_task.ready_head h;
    SELECT g.last_value INTO gen FROM long_task.ready_gen g;
    FOR i IN least(head, gen) .. gen LOOP
        slots := slots || (i % 8)::smallint;
    END LOOP;
    RETURN slots;
END
$$;
