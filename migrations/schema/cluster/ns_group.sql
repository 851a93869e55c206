-- Advisory lock namespace of a group's coordinator lock (ns_group(), group_id), held by the
-- coordinator's session; 0x70746e02.
CREATE OR REPLACE FUNCTION long_task.ns_group() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678530 $$;
