-- Which function runs on which write of which table. Re-creatable (CREATE OR REPLACE TRIGGER);
-- triggers of one event and timing fire in name order, which the BEFORE ROW functions rely on:
--   task_before_insert, task_deps_before_insert   (INSERT)
--   task_before_update, task_before_update_reset_lost   (UPDATE)
-- The WHEN clauses keep PL/pgSQL out of rows a trigger leaves alone (a WHEN of a BEFORE trigger
-- sees NEW as changed by the triggers before it).

-- The state machine: legal transitions, pinning, clean outcomes on re-queue (state_machine/).
CREATE OR REPLACE TRIGGER task_before_insert BEFORE INSERT ON long_task.task
    FOR EACH ROW EXECUTE FUNCTION long_task.task_before_write();
CREATE OR REPLACE TRIGGER task_before_update BEFORE UPDATE ON long_task.task
    FOR EACH ROW EXECUTE FUNCTION long_task.task_before_write();

-- A task queued again from a final state or a draft starts with a fresh lost-run count.
CREATE OR REPLACE TRIGGER task_before_update_reset_lost BEFORE UPDATE ON long_task.task
    FOR EACH ROW WHEN (NEW.state_id = 'AW' AND OLD.state_id IN ('CS', 'CF', 'CC', 'DR'))
    EXECUTE FUNCTION long_task.task_reset_lost();

-- Multistage, at insert: dependencies must exist; a failed one cancels the new task at once.
CREATE OR REPLACE TRIGGER task_deps_before_insert BEFORE INSERT ON long_task.task
    FOR EACH ROW WHEN (NEW.depends_on IS NOT NULL)
    EXECUTE FUNCTION long_task.task_deps_before_insert();

-- One AFTER statement trigger per event: the dependency cascade and the notifications
-- (notify/task_after_write.sql).
CREATE OR REPLACE TRIGGER task_after_insert AFTER INSERT ON long_task.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();
CREATE OR REPLACE TRIGGER task_after_update AFTER UPDATE ON long_task.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();
CREATE OR REPLACE TRIGGER task_after_delete AFTER DELETE ON long_task.task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_after_write();

-- A node's row changed (stop code, process limit): tell that node (notify/worker_notify.sql).
CREATE OR REPLACE TRIGGER worker_notify AFTER UPDATE ON long_task.worker
    FOR EACH ROW EXECUTE FUNCTION long_task.worker_notify();

-- Also on INSERT: a pause of a group that had no settings row inserts one, and must wait for
-- the group's claims in flight like any other pause.
CREATE OR REPLACE TRIGGER group_settings_notify AFTER INSERT OR UPDATE ON long_task.group_settings
    FOR EACH ROW EXECUTE FUNCTION long_task.group_settings_notify();

-- A group's limits changed: wait for its claims in flight, hold off new ones until the commit
-- (limits/limit_change_lock.sql). After group_settings_notify (name order), which takes the
-- pause lock first, in the order of a claim.
CREATE OR REPLACE TRIGGER limit_change_lock AFTER INSERT OR DELETE ON long_task.group_settings
    FOR EACH ROW EXECUTE FUNCTION long_task.limit_change_lock();
CREATE OR REPLACE TRIGGER limit_change_lock_update AFTER UPDATE ON long_task.group_settings
    FOR EACH ROW WHEN ((OLD.group_id, OLD.max_running, OLD.key_limit, OLD.rate_limit, OLD.rate_interval, OLD.fair_share)
                       IS DISTINCT FROM (NEW.group_id, NEW.max_running, NEW.key_limit, NEW.rate_limit, NEW.rate_interval, NEW.fair_share))
    EXECUTE FUNCTION long_task.limit_change_lock();
CREATE OR REPLACE TRIGGER limit_change_lock AFTER INSERT OR UPDATE OR DELETE ON long_task.key_limit
    FOR EACH ROW EXECUTE FUNCTION long_task.limit_change_lock();

-- A per-key limit was set, changed or removed: wake the group (notify/key_limit_notify.sql).
CREATE OR REPLACE TRIGGER key_limit_notify AFTER INSERT OR UPDATE OR DELETE ON long_task.key_limit
    FOR EACH ROW EXECUTE FUNCTION long_task.key_limit_notify();
