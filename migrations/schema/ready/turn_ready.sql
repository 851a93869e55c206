-- The coordinator's turn of the ready ring, in a transaction of its own (a slow scheduler tick
-- never delays it): rotates (long_task.rotate_ready) and says whether the ring needs turning
-- again soon — its insert slot holds entries, more than one slot is live, or a slot outside the
-- live ones still has storage (an entry inserted while its slot was retired, which no claim
-- reads: a rotation that could not lock that slot, or came within 200 ms of the last, left it).
-- The Scheduler calls it every 250 ms while it does, and again when tasks become claimable.
CREATE OR REPLACE FUNCTION long_task.turn_ready() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    gen bigint;
BEGIN
    PERFORM long_task.rotate_ready();
    SELECT h.last_value INTO head FROM long_task.ready_head h;
    SELECT g.last_value INTO gen FROM long_task.ready_gen g;
    RETURN head < gen OR pg_relation_size(format('long_task.ready_%s', gen % 8)::regclass) > 0
        OR EXISTS (SELECT 1 FROM generate_series(0, 7) s
                    WHERE s <> ALL (long_task.ready_live_slots())
                      AND pg_relation_size(format('long_task.ready_%s', s)::regclass) > 0);
END
$$;
