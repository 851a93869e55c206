-- pgtaskd schema, version 14: pausing a group. While `paused`, no node of the group starts a
-- task and no SQL consumer takes one of it (long_task.claim, consume_topic); running tasks go on
-- unless the pause asked to cancel them (long_task.pause_group). Clearing it wakes the group's
-- nodes at once (the group_settings trigger notifies the group's channel).
ALTER TABLE long_task.group_settings ADD COLUMN paused boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN long_task.group_settings.paused IS
    'no task of the group starts while true (long_task.pause_group / resume_group, or UPDATE it)';
