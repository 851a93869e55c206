-- How many claim slots a limited group has (K in long_task.take_limited's proof): at most this
-- many claims of a group far from its limits run at once; each takes at most a 2K-th of the
-- group limit per slot it holds, and of each key at most a 2K-th of the lowest key limit.
CREATE OR REPLACE FUNCTION long_task.limit_slots() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 8 $$;
