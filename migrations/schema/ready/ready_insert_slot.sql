-- The slot new entries of long_task.ready go into: the insert generation modulo 8. PL/pgSQL:
-- planned once per session.
CREATE OR REPLACE FUNCTION long_task.ready_insert_slot() RETURNS smallint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT (g.last_value % 8)::smallint FROM long_task.ready_gen g);
END
$$;
