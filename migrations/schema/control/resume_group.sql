-- Resumes a paused group (group_settings.paused = false); the group_settings trigger wakes its
-- nodes at once. Returns whether it was paused.
CREATE OR REPLACE FUNCTION long_task.resume_group(p_group_id integer)
RETURNS boolean
LANGUAGE sql AS $$
    UPDATE long_task.group_settings SET paused = false
     WHERE group_id = p_group_id AND paused
    RETURNING true
$$;
