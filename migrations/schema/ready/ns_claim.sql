-- Advisory lock namespace of taking a task's entry off the ready ring (ns_claim(), task id
-- modulo 2^31 - 1), held by the taking transaction; 0x70746e04.
CREATE OR REPLACE FUNCTION long_task.ns_claim() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678532 $$;
