-- Takes a limited group whole for the rest of the transaction: its limit lock (ns_limit, group
-- id), then each of its claim slots in order (ns_limit_slot() + i), so that no claim of the group
-- is in flight beside the caller and none starts before it commits (long_task.take_limited's
-- counted path, and a change of the group's limits: long_task.limit_change_lock). Waits for the
-- claims in flight; records in the transaction that it holds every slot
-- (long_task.limit_slots_<group>, read by take_limited).
CREATE OR REPLACE FUNCTION long_task.lock_limit_group(p_group_id integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(long_task.ns_limit(), p_group_id);
    FOR i IN 0 .. long_task.limit_slots() - 1 LOOP
        PERFORM pg_advisory_xact_lock(long_task.ns_limit_slot() + i, p_group_id);
    END LOOP;
    PERFORM set_config('long_task.limit_slots_' || replace(p_group_id::text, '-', 'm'),
                       ((1 << long_task.limit_slots()) - 1)::text, true);
END
$$;
