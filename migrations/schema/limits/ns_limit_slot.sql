-- Advisory lock namespaces of a limited group's claim slots (ns_limit_slot() + i, group id; i in
-- 0 .. long_task.limit_slots() - 1): a claim far from every limit holds one or more slots, so at
-- most limit_slots() such claims of a group are in flight at once (long_task.take_limited);
-- 0x70746e30 to 0x70746e37.
CREATE OR REPLACE FUNCTION long_task.ns_limit_slot() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678576 $$;
