-- Refuses a role's use of a group long_task.group_access does not give it (SQLSTATE 42501),
-- naming the role, the group and the groups it may use. Called by the task trigger for a new
-- task or a task moved to another group (with current_user), and by the SQL consumer API, which
-- bypasses row-level security (with session_user).
CREATE OR REPLACE FUNCTION long_task.check_group_access(p_group_id integer, p_role name) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    groups integer[] := long_task.accessible_groups(p_role);
BEGIN
    IF groups IS NOT NULL AND NOT (p_group_id = ANY (groups)) THEN
        RAISE EXCEPTION 'role "%" may not use group %', p_role, p_group_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('long_task.group_access gives it group(s) %s', array_to_string(groups, ', ')),
                  HINT = 'use one of those groups, or ask the database administrator for access';
    END IF;
END
$$;
