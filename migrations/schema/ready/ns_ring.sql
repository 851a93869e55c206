-- Advisory lock namespace of the ready ring's rotation (one rotation at a time, per database);
-- 0x70746e03.
CREATE OR REPLACE FUNCTION long_task.ns_ring() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678531 $$;
