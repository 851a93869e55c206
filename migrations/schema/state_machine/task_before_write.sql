-- The BEFORE ROW trigger of every insert and update of long_task.task: the state machine
-- (long_task.legal_next_states), pinning (a worker_id set by a person pins the task), a cancel of
-- a waiting task ending CC at once, a clean outcome for a new attempt, the group's max_attempts
-- for a task inserted without one, the group's program allow-list for a new command
-- (check_program), the task's own environment (check_env), the role's access to the group
-- (check_group_access, long_task.group_access; current_user is the role whose privileges the
-- statement runs under, the owner inside the SQL API's SECURITY DEFINER functions, which check
-- the login role themselves), and who did it: created_by at insert, changed_by at each cancel or re-queue
-- (session_user; never what the client wrote), and a cron schedule's checks (check_cron: one rule,
-- the expression's shape, a known time zone) and its start: a row given a cron expression (or a new
-- expression or zone) without a next_start of its own gets next_start = now(), so the schedule runs
-- from now on and the coordinator hears of it ('sched'). The task_state and period tables
-- are read only to word the error of a rejected write (reject_task_state, check_period).
CREATE OR REPLACE FUNCTION long_task.task_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state_id IS NULL OR NEW.state_id NOT IN ('DR', 'AW') THEN
            PERFORM long_task.reject_task_state(NEW.state_id, NULL, NULL);
        END IF;
        IF NEW.shed_period_id IS NOT NULL THEN
            PERFORM long_task.check_period(NEW.shed_period_id);
        END IF;
        IF NEW.shed_cron IS NOT NULL OR NEW.shed_timezone IS NOT NULL THEN
            PERFORM long_task.check_cron(NEW.shed_cron, NEW.shed_timezone, NEW.shed_period_id);
            IF NEW.shed_cron IS NOT NULL AND NEW.next_start IS NULL THEN
                NEW.next_start := now();
            END IF;
        END IF;
        IF NEW.command IS NOT NULL THEN
            PERFORM long_task.check_program(NEW.command, NEW.group_id);
        END IF;
        IF NEW.env IS NOT NULL THEN
            PERFORM long_task.check_env(NEW.env);
        END IF;
        -- (no row in long_task.group_access: every role may use every group, and the check's
        -- two function calls per inserted row are skipped)
        IF EXISTS (SELECT 1 FROM long_task.group_access) THEN
            PERFORM long_task.check_group_access(NEW.group_id, current_user);
        END IF;
        NEW.last_state_change := now();
        NEW.created_by := session_user;
        NEW.changed_by := NULL;
        -- a worker_id given by a person pins the task to that node
        NEW.pinned := NEW.worker_id IS NOT NULL;
        -- the one default of every client (the column has none)
        IF NEW.max_attempts IS NULL THEN
            NEW.max_attempts := long_task.default_max_attempts(NEW.group_id);
        END IF;
        RETURN NEW;
    END IF;

    -- who did it is the trigger's to say
    NEW.created_by := OLD.created_by;
    NEW.changed_by := OLD.changed_by;
    IF NEW.group_id IS DISTINCT FROM OLD.group_id THEN
        PERFORM long_task.check_group_access(NEW.group_id, current_user);
    END IF;
    IF NEW.env IS DISTINCT FROM OLD.env THEN
        PERFORM long_task.check_env(NEW.env);
    END IF;

    -- Pinning: a worker_id set by a person (not by a node's claim or a node's own write) pins the
    -- task; the node that merely ran a task last does not.
    IF NEW.worker_id IS DISTINCT FROM OLD.worker_id AND NEW.state_id IS DISTINCT FROM 'AE'
       AND coalesce(current_setting('long_task.node_write', true), '') <> 'on' THEN
        NEW.pinned := NEW.worker_id IS NOT NULL;
    END IF;

    IF NEW.state_id IS DISTINCT FROM OLD.state_id THEN
        IF NEW.state_id IS NULL OR NOT NEW.state_id = ANY (long_task.legal_next_states(OLD.state_id)) THEN
            PERFORM long_task.reject_task_state(NEW.state_id, OLD.state_id, OLD.id);
        END IF;
        NEW.last_state_change := now();
        -- a cancel, or a re-queue of a finished task or a draft (not a retry or a hand-back)
        IF NEW.state_id = 'AC' OR (NEW.state_id = 'AW' AND OLD.state_id IN ('CS', 'CF', 'CC', 'DR')) THEN
            NEW.changed_by := session_user;
        END IF;

        -- A cancel of a task that is not running ends at once: there is no process to kill.
        IF NEW.state_id = 'AC' AND OLD.state_id = 'AW' THEN
            NEW.state_id := 'CC';
            NEW.error := coalesce(NEW.error, 'cancelled before start');
        END IF;

        IF NEW.state_id = 'AW' THEN
            -- Queued (again): any node of the group may take it unless it is pinned, and a new
            -- attempt starts from a clean outcome.
            IF NOT NEW.pinned THEN
                NEW.worker_id := NULL;
            END IF;
            NEW.run_id := NULL;
            IF OLD.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
                NEW.attempt := 0;
                NEW.error := NULL;
                NEW.exit_code := NULL;
                NEW.exit_signal := NULL;
                NEW.stdout_tail := NULL;
                NEW.stderr_tail := NULL;
                NEW.started := NULL;
                NEW.finished := NULL;
            END IF;
        ELSIF NEW.state_id = 'AE' THEN
            IF NEW.run_id IS NULL OR NEW.worker_id IS NULL THEN
                RAISE EXCEPTION 'task % can only enter AE through a node''s claim (run_id and worker_id set)', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
        ELSIF NEW.state_id IN ('CS', 'CF', 'CC') THEN
            NEW.finished := coalesce(NEW.finished, now());
        END IF;
    END IF;
    IF NEW.shed_period_id IS DISTINCT FROM OLD.shed_period_id AND NEW.shed_period_id IS NOT NULL THEN
        PERFORM long_task.check_period(NEW.shed_period_id);
    END IF;
    IF (NEW.shed_cron IS NOT NULL OR NEW.shed_timezone IS NOT NULL)
       AND (NEW.shed_cron IS DISTINCT FROM OLD.shed_cron OR NEW.shed_timezone IS DISTINCT FROM OLD.shed_timezone
            OR NEW.shed_period_id IS DISTINCT FROM OLD.shed_period_id) THEN
        PERFORM long_task.check_cron(NEW.shed_cron, NEW.shed_timezone, NEW.shed_period_id);
        IF NEW.shed_cron IS NOT NULL AND NEW.next_start IS NOT DISTINCT FROM OLD.next_start
           AND (NEW.shed_cron IS DISTINCT FROM OLD.shed_cron OR NEW.shed_timezone IS DISTINCT FROM OLD.shed_timezone) THEN
            NEW.next_start := now();
        END IF;
    END IF;
    -- a new command or a move to another group meets that group's list (a task queued again
    -- keeps the command it was admitted with; each node checks its own list before every run)
    IF NEW.command IS NOT NULL
       AND (NEW.command IS DISTINCT FROM OLD.command OR NEW.group_id IS DISTINCT FROM OLD.group_id) THEN
        PERFORM long_task.check_program(NEW.command, NEW.group_id);
    END IF;
    RETURN NEW;
END
$$;
