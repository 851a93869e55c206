-- A node's row changed where the node must react (stop code, process limit): notify channel
-- long_task_worker with the worker id as payload.
CREATE OR REPLACE FUNCTION long_task.worker_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stop IS DISTINCT FROM OLD.stop OR NEW.max_task_count IS DISTINCT FROM OLD.max_task_count THEN
        PERFORM pg_notify('long_task_worker', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;
