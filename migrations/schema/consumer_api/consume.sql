-- consume_topic for any topic: up to n waiting consumer tasks of one group (NULL: any).
CREATE OR REPLACE FUNCTION long_task.consume(n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM long_task.consume_topic(NULL, n, p_group_id);
END
$$;
