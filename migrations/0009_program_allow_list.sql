-- pgtaskd schema, version 9: a program allow-list per group, the database's half of "a row must
-- not be enough to run anything" (docs/security.md). NULL, the default, allows every program (the
-- reference examples and `pgtaskd dev` keep working); a list allows only commands whose program
-- (command[1], as written) matches one of its glob patterns, checked by the task trigger when a
-- person inserts a task, changes its command or group, or queues it again
-- (long_task.check_program). Each node checks its own `allowed_programs` again before spawning.
ALTER TABLE long_task.group_settings ADD COLUMN allowed_programs text[];
COMMENT ON COLUMN long_task.group_settings.allowed_programs IS
    'glob patterns of the programs tasks of this group may run (* within a directory, ** across, ? one character); NULL: any';
