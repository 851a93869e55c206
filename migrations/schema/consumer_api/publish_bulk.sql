-- Publishes many tasks in one statement (one notification) and returns their ids in input order
-- (an existing id where a dedup_key was taken, by an active task or earlier in the same batch).
CREATE OR REPLACE FUNCTION long_task.publish_bulk(p_tasks long_task.bulk_task[], p_group_id integer DEFAULT 0)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    inserted bigint[];
    default_attempts integer;
BEGIN
    IF p_tasks IS NULL OR cardinality(p_tasks) = 0 THEN
        RETURN;
    END IF;
    -- SECURITY DEFINER (it draws ids from the table's sequence): the login role's access to the
    -- group is checked here, as row-level security would for a plain INSERT
    PERFORM long_task.check_group_access(coalesce(p_group_id, 0), session_user);
    -- the default of long_task.task_before_write, looked up once for the batch
    default_attempts := long_task.default_max_attempts(coalesce(p_group_id, 0));
    SELECT array_agg(nextval(pg_get_serial_sequence('long_task.task', 'id')) ORDER BY i)
      INTO ids FROM generate_subscripts(p_tasks, 1) i;
    WITH ins AS (
        INSERT INTO long_task.task (id, topic, params, state_id, run_after, timeout, priority, max_attempts,
                                    group_id, dedup_key)
        SELECT ids[i], (p_tasks[i]).topic, (p_tasks[i]).params, 'AW', (p_tasks[i]).run_after,
               (p_tasks[i]).timeout, coalesce((p_tasks[i]).priority, 0),
               coalesce((p_tasks[i]).max_attempts, default_attempts), coalesce(p_group_id, 0),
               (p_tasks[i]).dedup_key
          FROM generate_subscripts(p_tasks, 1) i
         ORDER BY i
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state_id IN ('DR', 'AW', 'AE', 'AC')
        DO NOTHING
        RETURNING id
    )
    SELECT array_agg(ins.id) INTO inserted FROM ins;
    RETURN QUERY
        SELECT CASE WHEN x.id IS NOT NULL THEN x.id
                    ELSE (SELECT t.id FROM long_task.task t
                           WHERE t.dedup_key = (p_tasks[i]).dedup_key AND t.state_id IN ('DR', 'AW', 'AE', 'AC'))
               END
          FROM generate_subscripts(p_tasks, 1) i
          LEFT JOIN unnest(inserted) x(id) ON x.id = ids[i]
         ORDER BY i;
END
$$;
