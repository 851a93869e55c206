-- Advisory lock namespace of a limited group's claims (ns_limit(), group id), held by the
-- claiming transaction: the claims of a group with limits run one at a time; 0x70746e05.
CREATE OR REPLACE FUNCTION long_task.ns_limit() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678533 $$;
