-- Why the group allow-list (group_settings.allowed_programs, migration 9) refuses a command's
-- program (command[1]): the list, worded for an error's DETAIL; NULL when the program may run (no
-- list, no command, or a pattern matches). A program with a `.` or `..` component is refused
-- whenever a list is set: the database cannot resolve it the way a node would. For callers that
-- must not raise (a clone schedule); the task trigger raises through long_task.check_program.
CREATE OR REPLACE FUNCTION long_task.program_refusal(p_command text[], p_group_id integer) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    allowed text[];
    program text := p_command[1];
BEGIN
    SELECT s.allowed_programs INTO allowed FROM long_task.group_settings s WHERE s.group_id = p_group_id;
    IF allowed IS NULL OR program IS NULL THEN
        RETURN NULL;
    END IF;
    IF program !~ '(^|/)\.\.?(/|$)'
       AND EXISTS (SELECT 1 FROM unnest(allowed) a(pattern) WHERE long_task.program_matches(program, a.pattern)) THEN
        RETURN NULL;
    END IF;
    RETURN format('group_settings.allowed_programs of group %s: %s', p_group_id,
                  CASE WHEN cardinality(allowed) = 0 THEN 'an empty list (no program may run)'
                       ELSE array_to_string(allowed, ', ') END);
END
$$;
