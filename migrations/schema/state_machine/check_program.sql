-- The group allow-list (group_settings.allowed_programs, migration 9): whether a glob pattern
-- matches a program path — `*` and `?` stay within one directory, `**` crosses directories,
-- every other character stands for itself — and the check of the task trigger, which refuses a
-- command whose program matches no pattern of its group's list (a program with a `.` or `..`
-- component is refused whenever a list is set: the database cannot resolve it the way a node
-- would). Nothing is written when it refuses.
CREATE OR REPLACE FUNCTION long_task.program_matches(p_program text, p_pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT p_program ~ ('^' || replace(replace(replace(replace(
               regexp_replace(p_pattern, '([.+^$(){}\[\]|\\])', '\\\1', 'g'),
               '**', chr(1)), '*', '[^/]*'), '?', '[^/]'), chr(1), '.*') || '$')
$$;

CREATE OR REPLACE FUNCTION long_task.check_program(p_command text[], p_group_id integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    allowed text[];
    program text := p_command[1];
BEGIN
    SELECT s.allowed_programs INTO allowed FROM long_task.group_settings s WHERE s.group_id = p_group_id;
    IF allowed IS NULL OR program IS NULL THEN
        RETURN;
    END IF;
    IF program !~ '(^|/)\.\.?(/|$)'
       AND EXISTS (SELECT 1 FROM unnest(allowed) a(pattern) WHERE long_task.program_matches(program, a.pattern)) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'program "%" is not allowed in group %', program, p_group_id
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = format('group_settings.allowed_programs of group %s: %s', p_group_id,
                              CASE WHEN cardinality(allowed) = 0 THEN 'an empty list (no program may run)'
                                   ELSE array_to_string(allowed, ', ') END),
              HINT = 'use a program the list names, or ask an operator to extend the group''s allowed_programs';
END
$$;
