-- Whether a take that read the live slots p_slots and ran out must read the ring again: a
-- rotation moved entries past its read. A rotation retires the head slot by moving its live
-- entries into the insert slot, emptying the slot and advancing ready_head; the sequence moves
-- at once, the moved entries show only when the rotation commits. A take that read the head in
-- between saw neither the old head (no longer live) nor the moved entries (not committed), and
-- would take the queue for empty with tasks waiting (a node is woken when the rotation commits;
-- a SQL consumer is not).
-- With no rotation running (ns_ring free), it reads again when the live slots changed since its
-- read (a rotation committed meanwhile). With one running, the slot before p_slots' head is the
-- one that rotation retired if the take read after the head advanced: the rotation holds it
-- locked until it commits, so asking for its size waits for that commit (at most 250 ms: a
-- rotation that a claimer ran inside a transaction it keeps open is not waited for long), and
-- the take reads again. A rotation that has not advanced the head yet holds no such slot, and
-- nothing waits for it (it may be waiting for this take's own lock on the head).
-- Costs a try-lock and two sequence reads, and only on a take that ran out.
CREATE OR REPLACE FUNCTION long_task.ring_read_again(p_slots smallint[]) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old_timeout text;
    waited boolean;
BEGIN
    IF pg_try_advisory_lock_shared(long_task.ns_ring(), 0) THEN
        PERFORM pg_advisory_unlock_shared(long_task.ns_ring(), 0);
        RETURN long_task.ready_live_slots() IS DISTINCT FROM p_slots;
    END IF;
    old_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', '250ms', true);
    BEGIN
        PERFORM pg_relation_size(format('long_task.ready_%s', (p_slots[1] + 7) % 8)::regclass);
        waited := true;
    EXCEPTION WHEN lock_not_available THEN
        waited := false;
    END;
    PERFORM set_config('lock_timeout', old_timeout, true);
    RETURN waited;
END
$$;
