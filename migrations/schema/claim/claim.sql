-- Claims up to n runnable tasks of a group for a node: waiting, not pinned elsewhere, run_after
-- reached, every dependency CS; process tasks when p_commands (a task with a command, or with
-- neither command nor topic), and topic tasks whose topic is in p_topics (the node's handlers).
-- Each claimed task gets a new run_id (the fencing token of this attempt) and attempt + 1. The
-- picked rows are updated through the primary key and returned in claim order (priority, then
-- first in first out). PL/pgSQL, so its plan is cached per session.
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer,
                                           p_topics text[], p_commands boolean)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision,
               attempt integer, topic text, params jsonb, max_attempts integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- a node's write: the statement trigger skips what only a person's write can cause
    PERFORM set_config('long_task.node_write', 'on', true);
    RETURN QUERY
    WITH picked AS (
        SELECT t.id, t.priority, t.last_state_change
          FROM long_task.task t
         WHERE t.state_id = 'AW' AND t.group_id = p_group_id
           AND (t.worker_id IS NULL OR t.worker_id = p_worker_id)
           AND (t.run_after IS NULL OR t.run_after <= now())
           AND ((p_commands AND (t.command IS NOT NULL OR t.topic IS NULL)) OR t.topic = ANY (p_topics))
           AND (t.depends_on IS NULL OR NOT EXISTS (
                   SELECT 1 FROM long_task.task d WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS'))
         ORDER BY t.priority, t.last_state_change, t.id
         LIMIT n
           FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = 'AE', worker_id = p_worker_id, run_id = gen_random_uuid(),
               attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL, lease_until = NULL,
               error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL,
               result = NULL
         WHERE t.id = ANY (ARRAY(SELECT p.id FROM picked p))
        RETURNING t.id, t.run_id, t.command, t.cwd, t.timeout, t.attempt, t.topic, t.params, t.max_attempts
    )
    SELECT u.id, u.run_id, u.command, u.cwd, u.timeout, u.attempt, u.topic, u.params, u.max_attempts
      FROM upd u JOIN picked p ON p.id = u.id
     ORDER BY p.priority, p.last_state_change, p.id;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;

-- The claim of process tasks only (the reference interface's form, kept for SQL callers).
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision, attempt integer)
LANGUAGE sql AS $$
    SELECT c.id, c.run_id, c.command, c.cwd, c.timeout, c.attempt
      FROM long_task.claim(p_worker_id, p_group_id, n, '{}'::text[], true) c
$$;
