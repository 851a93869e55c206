-- The AFTER ROW trigger of group_settings (its limit columns) and long_task.key_limit: a change
-- of a group's limits waits for the group's claims in flight and holds off new ones until it
-- commits (long_task.lock_limit_group). So claims in flight together have read the same limits,
-- which the shared path's proof needs (the sizes of the others' takes are derived from them:
-- long_task.take_limited), and a limit lowered holds from the first claim after its commit.
CREATE OR REPLACE FUNCTION long_task.limit_change_lock() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM long_task.lock_limit_group(OLD.group_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM long_task.lock_limit_group(NEW.group_id);
    END IF;
    RETURN NULL;
END
$$;
