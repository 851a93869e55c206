-- A task queued again from a final state (or a draft) starts with a fresh lost-run count.
CREATE OR REPLACE FUNCTION long_task.task_reset_lost() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state_id = 'AW' AND OLD.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
        NEW.lost_reruns := 0;
    END IF;
    RETURN NEW;
END
$$;
