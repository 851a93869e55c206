-- The notification channel of a group: long_task_g<group_id>.
CREATE OR REPLACE FUNCTION long_task.channel(group_id integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'long_task_g' || group_id $$;
