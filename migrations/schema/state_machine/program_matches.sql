-- Whether a glob pattern of the group allow-list (group_settings.allowed_programs, migration 9)
-- matches a program path: `*` and `?` stay within one directory, `**` crosses directories, every
-- other character stands for itself.
CREATE OR REPLACE FUNCTION long_task.program_matches(p_program text, p_pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT p_program ~ ('^' || replace(replace(replace(replace(
               regexp_replace(p_pattern, '([.+^$(){}\[\]|\\])', '\\\1', 'g'),
               '**', chr(1)), '*', '[^/]*'), '?', '[^/]'), chr(1), '.*') || '$')
$$;
