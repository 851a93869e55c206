-- Multistage, at insert: every dependency must exist; a task whose dependency already ended CF
-- or CC is cancelled at once (runs after task_before_insert: trigger names sort). A task's
-- depends_on is read at insert only: changing it later is not supported.
CREATE OR REPLACE FUNCTION long_task.task_deps_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    IF NEW.depends_on IS NULL OR cardinality(NEW.depends_on) = 0 THEN
        RETURN NEW;
    END IF;
    -- Lock the dependencies (FOR SHARE conflicts with their UPDATE): a dependency ending in a
    -- concurrent transaction either waits for this insert to commit (and then finds this task) or
    -- has committed before the checks below (which then see its final state). Without it, a
    -- dependent inserted while its dependency fails could wait forever.
    PERFORM 1 FROM long_task.task t WHERE t.id = ANY (NEW.depends_on) FOR SHARE;
    SELECT d.id INTO missing FROM unnest(NEW.depends_on) d(id)
     WHERE NOT EXISTS (SELECT 1 FROM long_task.task t WHERE t.id = d.id) LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'task depends on task %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM long_task.task t WHERE t.id = ANY (NEW.depends_on) AND t.state_id IN ('CF', 'CC')) THEN
        NEW.state_id := 'CC';
        NEW.error := 'dependency failed';
        NEW.finished := now();
    END IF;
    RETURN NEW;
END
$$;
