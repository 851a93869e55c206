-- The task trigger's check of a task's own environment (task.env, migration 11): a JSON object
-- of at most 64 variables whose names are portable ([A-Za-z_][A-Za-z0-9_]*, at most 128 bytes)
-- and whose values are strings of at most 4096 bytes, 32 KiB in all. Names that would change how
-- an allowed program is loaded or started are refused (LD_*, PATH, IFS, BASH_ENV, ENV, GCONV_PATH,
-- and the node's own PGTASKD_*): the allow-lists are about programs, and a variable must not
-- turn an allowed program into another. Each node checks the same rule again before spawning.
CREATE OR REPLACE FUNCTION long_task.check_env(p_env jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    total integer := 0;
BEGIN
    IF p_env IS NULL THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_env) <> 'object' THEN
        RAISE EXCEPTION 'task env must be a JSON object of names to strings, not %', jsonb_typeof(p_env)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(p_env)) > 64 THEN
        RAISE EXCEPTION 'task env holds more than 64 variables' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p_env) e LOOP
        IF k !~ '^[A-Za-z_][A-Za-z0-9_]*$' OR octet_length(k) > 128 THEN
            RAISE EXCEPTION 'task env: "%" is not a valid variable name', k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'names are [A-Za-z_][A-Za-z0-9_]*, at most 128 bytes';
        END IF;
        IF upper(k) LIKE 'LD\_%' OR upper(k) LIKE 'PGTASKD\_%'
           OR upper(k) IN ('PATH', 'IFS', 'BASH_ENV', 'ENV', 'GCONV_PATH') THEN
            RAISE EXCEPTION 'task env: "%" may not be set by a task', k
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'LD_*, PGTASKD_*, PATH, IFS, BASH_ENV, ENV and GCONV_PATH are the node''s to set';
        END IF;
        IF jsonb_typeof(v) <> 'string' THEN
            RAISE EXCEPTION 'task env: the value of "%" must be a string, not %', k, jsonb_typeof(v)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF octet_length(v #>> '{}') > 4096 THEN
            RAISE EXCEPTION 'task env: the value of "%" is longer than 4096 bytes', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        total := total + octet_length(k) + octet_length(v #>> '{}');
    END LOOP;
    IF total > 32768 THEN
        RAISE EXCEPTION 'task env holds more than 32 KiB' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
