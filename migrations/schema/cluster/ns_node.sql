-- Advisory lock namespace (first int of the two-int key) of a node's liveness lock
-- (ns_node(), worker_id), held by the node's membership session; 0x70746e01.
CREATE OR REPLACE FUNCTION long_task.ns_node() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678529 $$;
