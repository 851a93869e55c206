-- pgtaskd schema, version 11: least privilege in the database (docs/security.md).
--
-- * long_task.group_access: which groups a role may use. A role with no row (directly or through
--   a role it is a member of) may use every group, so isolation is opt-in; a role with rows sees,
--   queues, cancels and consumes tasks of those groups only (row-level security on task,
--   task_run and event, and the same rule inside the SQL functions that bypass it). The roles
--   themselves (pgtaskd_submitter, pgtaskd_operator, pgtaskd_node, pgtaskd_reader) and every
--   grant are in migrations/schema/access/privileges.sql, re-applied with the schema files.
-- * The run-as user of a group's tasks (group_settings.run_as, bounded on each node by its
--   config's run_as_allowed) and resource limits per task with group defaults.
-- * task.env: per-task environment variables (names and sizes checked by the task trigger).
CREATE TABLE long_task.group_access (
    grantee  regrole NOT NULL,
    group_id integer NOT NULL,
    PRIMARY KEY (grantee, group_id)
);
COMMENT ON TABLE long_task.group_access IS
    'the groups a role (and every role that is a member of it) may use; a role with no row here may use every group';

ALTER TABLE long_task.group_settings
    ADD COLUMN run_as text CONSTRAINT group_run_as CHECK (run_as ~ '^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$'),
    ADD COLUMN limit_memory bigint CONSTRAINT group_limit_memory CHECK (limit_memory > 0),
    ADD COLUMN limit_cpu_seconds bigint CONSTRAINT group_limit_cpu_seconds CHECK (limit_cpu_seconds > 0),
    ADD COLUMN limit_open_files bigint CONSTRAINT group_limit_open_files CHECK (limit_open_files > 0),
    ADD COLUMN limit_processes bigint CONSTRAINT group_limit_processes CHECK (limit_processes > 0);
COMMENT ON COLUMN long_task.group_settings.run_as IS
    'the OS user (user or user:group) the group''s tasks run as; each node runs them so only if its run_as_allowed names the user';
COMMENT ON COLUMN long_task.group_settings.limit_memory IS 'default address-space limit of a task process, bytes';
COMMENT ON COLUMN long_task.group_settings.limit_cpu_seconds IS 'default CPU-time limit of a task process, seconds';
COMMENT ON COLUMN long_task.group_settings.limit_open_files IS 'default open-file limit of a task process';
COMMENT ON COLUMN long_task.group_settings.limit_processes IS 'default process limit (per user) of a task process';

ALTER TABLE long_task.task
    ADD COLUMN env jsonb,
    ADD COLUMN limit_memory bigint CONSTRAINT task_limit_memory CHECK (limit_memory > 0),
    ADD COLUMN limit_cpu_seconds bigint CONSTRAINT task_limit_cpu_seconds CHECK (limit_cpu_seconds > 0),
    ADD COLUMN limit_open_files bigint CONSTRAINT task_limit_open_files CHECK (limit_open_files > 0),
    ADD COLUMN limit_processes bigint CONSTRAINT task_limit_processes CHECK (limit_processes > 0);
COMMENT ON COLUMN long_task.task.env IS
    'environment variables of the task''s process: an object of names to string values (checked by the task trigger)';

-- claim returns the task's environment, run-as user and limits from now on (a different row type)
DROP FUNCTION long_task.claim(bigint, integer, integer);
DROP FUNCTION long_task.claim(bigint, integer, integer, text[], boolean);

-- Which OS user a node runs its tasks as by default (its run_as, else its own user): `status`
-- and the status page warn about nodes that run tasks as root.
ALTER TABLE long_task.worker ADD COLUMN task_user text;
COMMENT ON COLUMN long_task.worker.task_user IS
    'the OS user the node runs tasks as when their group names none (its run_as, else its own user)';
