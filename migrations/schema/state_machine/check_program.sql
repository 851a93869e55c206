-- The task trigger's check of the group allow-list: refuses a command whose program the group's
-- list refuses (long_task.program_refusal), naming the program and the group, the list in DETAIL.
-- Nothing is written when it refuses.
CREATE OR REPLACE FUNCTION long_task.check_program(p_command text[], p_group_id integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    refusal text := long_task.program_refusal(p_command, p_group_id);
BEGIN
    IF refusal IS NOT NULL THEN
        RAISE EXCEPTION 'program "%" is not allowed in group %', p_command[1], p_group_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = refusal,
                  HINT = 'use a program the list names, or ask an operator to extend the group''s allowed_programs';
    END IF;
END
$$;
