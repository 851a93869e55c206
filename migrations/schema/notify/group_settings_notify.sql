-- The AFTER ROW trigger of group_settings: a group that is no longer paused, or whose limits
-- changed, wakes its nodes at once ('wake' on the group's channel, as a new waiting task would).
CREATE OR REPLACE FUNCTION long_task.group_settings_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- a pause waits for the group's claims in flight (they hold ns_pause shared)
    IF NEW.paused AND (TG_OP = 'INSERT' OR NOT OLD.paused) THEN
        PERFORM pg_advisory_xact_lock(long_task.ns_pause(), NEW.group_id);
    END IF;
    IF NOT NEW.paused AND (TG_OP = 'UPDATE' AND OLD.paused)
       -- a limit changed (raised, or removed): more may start
       OR TG_OP = 'UPDATE' AND (NEW.max_running, NEW.key_limit, NEW.rate_limit, NEW.rate_interval)
                               IS DISTINCT FROM (OLD.max_running, OLD.key_limit, OLD.rate_limit, OLD.rate_interval) THEN
        PERFORM pg_notify(long_task.channel(NEW.group_id), 'wake');
    END IF;
    RETURN NULL;
END
$$;
