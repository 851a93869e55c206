-- The notification channel of a group: long_task_g<group_id>. The explicit cast keeps the body
-- immutable (text || integer is anytextcat, only stable), so the function is inlined instead of
-- planned at every call.
CREATE OR REPLACE FUNCTION long_task.channel(group_id integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'long_task_g' || group_id::text $$;
