-- Advisory lock namespace of a group's pause (ns_pause(), group id): every claim and consume of
-- the group holds it shared while it reads group_settings.paused and takes tasks; a pause takes
-- it exclusive (the group_settings trigger), so it waits for the claims in flight and every
-- later claim sees it; 0x70746e11.
CREATE OR REPLACE FUNCTION long_task.ns_pause() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678545 $$;
