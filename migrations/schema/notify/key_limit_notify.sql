-- The AFTER statement trigger of long_task.key_limit, and the limit columns of group_settings
-- (group_settings_notify): a changed limit may let more tasks start, so the group's nodes are
-- woken ('wake').
CREATE OR REPLACE FUNCTION long_task.key_limit_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(long_task.channel(coalesce(NEW.group_id, OLD.group_id)), 'wake');
    RETURN NULL;
END
$$;
