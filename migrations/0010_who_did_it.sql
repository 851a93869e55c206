-- pgtaskd schema, version 10: who did it. The task row records the database role that created
-- it and the one that last cancelled or re-queued it, filled by the task trigger from
-- session_user (the login role; a client's own value is overwritten, and later writes cannot
-- change either), shown by `pgtaskd show`, GET /tasks/{id} and the status page. Rows written
-- before version 10 keep NULL: who made them was not recorded.
ALTER TABLE long_task.task ADD COLUMN created_by text, ADD COLUMN changed_by text;
COMMENT ON COLUMN long_task.task.created_by IS 'the login role that inserted the task (set by the trigger)';
COMMENT ON COLUMN long_task.task.changed_by IS 'the login role that last cancelled or re-queued the task (set by the trigger)';
