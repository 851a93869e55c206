-- The coordinator's turn of the ready ring, in a transaction of its own (a slow scheduler tick
-- never delays it): rotates (long_task.rotate_ready) and says whether the ring needs turning
-- again soon — its insert slot holds entries, or more than one slot is live. The Scheduler calls
-- it every 250 ms while it does, and again when tasks become claimable.
CREATE OR REPLACE FUNCTION long_task.turn_ready() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    gen bigint;
BEGIN
    PERFORM long_task.rotate_ready();
    SELECT h.last_value INTO head FROM long_task.ready_head h;
    SELECT g.last_value INTO gen FROM long_task.ready_gen g;
    RETURN head < gen OR pg_relation_size(format('long_task.ready_%s', gen % 8)::regclass) > 0;
END
$$;
