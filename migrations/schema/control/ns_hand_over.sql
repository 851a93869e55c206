-- Advisory lock namespace of a node's hand-over (ns_hand_over(), worker_id modulo 2^31 - 1): a
-- transaction lock, exclusive in long_task.hand_over_node, shared in every claim of that node,
-- so a claim never runs beside a hand-over of its node (it waits, then sees the stop code);
-- 0x70746e10.
CREATE OR REPLACE FUNCTION long_task.ns_hand_over() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678544 $$;
