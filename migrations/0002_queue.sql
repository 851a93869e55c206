-- pgtaskd schema, version 2: queue semantics — retries with back-off, attempt history, the SQL
-- consumer API (publish/consume/ack/nack with leases), handler topics, multistage tasks
-- (depends_on), unique tasks (dedup_key) and retention.
--
-- Compatibility: only new columns (all NULL by default), new tables, new functions and new
-- triggers; `claim` and `finish_runs` of version 1 keep their signatures and delegate to the new
-- ones, so a version-1 caller still works.

-- ---------------------------------------------------------------------------------------------
-- Columns
-- ---------------------------------------------------------------------------------------------
ALTER TABLE long_task.task
    -- a waiting task is not claimed before this time (retry back-off, delayed publish)
    ADD COLUMN run_after    timestamptz,
    -- handler / consumer tasks: the topic names the work (a task with a topic and no command is
    -- never run as a process)
    ADD COLUMN topic        text,
    -- multistage: runnable when every listed task is CS; CC 'dependency failed' when one ends CF/CC
    ADD COLUMN depends_on   bigint[],
    -- unique among active tasks (DR, AW, AE, AC): publishing it again returns the existing id
    ADD COLUMN dedup_key    text,
    -- what a handler or consumer returned (ack)
    ADD COLUMN result       jsonb,
    -- a SQL consumer's lease: the attempt fails with 'lease expired' after this time
    ADD COLUMN lease_until  timestamptz,
    -- back-off of this task (NULL: the group's setting, else the built-in default)
    ADD COLUMN retry_base   double precision CONSTRAINT task_retry_base CHECK (retry_base >= 0),
    ADD COLUMN retry_max    double precision CONSTRAINT task_retry_max CHECK (retry_max >= 0),
    ADD COLUMN retry_jitter double precision CONSTRAINT task_retry_jitter CHECK (retry_jitter BETWEEN 0 AND 1);

-- Retries coming due (the Scheduler's timer), per group.
CREATE INDEX task_run_after_idx ON long_task.task (group_id, run_after)
    WHERE state_id = 'AW' AND run_after IS NOT NULL;
-- SQL consumers: waiting topic tasks, priority then FIFO.
CREATE INDEX task_consume_idx ON long_task.task (priority, last_state_change, id)
    WHERE state_id = 'AW' AND command IS NULL AND topic IS NOT NULL;
-- Lease deadlines (the Scheduler's timer), per group.
CREATE INDEX task_lease_idx ON long_task.task (group_id, lease_until)
    WHERE lease_until IS NOT NULL AND state_id IN ('AE', 'AC');
-- Dependents of a task that just ended.
CREATE INDEX task_depends_on_idx ON long_task.task USING gin (depends_on)
    WHERE depends_on IS NOT NULL AND state_id IN ('DR', 'AW');
-- Unique tasks.
CREATE UNIQUE INDEX task_dedup_idx ON long_task.task (dedup_key)
    WHERE dedup_key IS NOT NULL AND state_id IN ('DR', 'AW', 'AE', 'AC');
-- Retention: the oldest final tasks of a group.
CREATE INDEX task_finished_idx ON long_task.task (group_id, finished)
    WHERE state_id IN ('CS', 'CF', 'CC');

-- ---------------------------------------------------------------------------------------------
-- Per-group settings (a group without a row, or a NULL column, takes the built-in default)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE long_task.group_settings (
    group_id          integer PRIMARY KEY,
    -- back-off: delay = min(retry_base * 2^(attempt-1), retry_max) * (1 - retry_jitter * random())
    retry_base        double precision CONSTRAINT group_retry_base CHECK (retry_base >= 0),   -- default 1 s
    retry_max         double precision CONSTRAINT group_retry_max CHECK (retry_max >= 0),     -- default 300 s
    retry_jitter      double precision CONSTRAINT group_retry_jitter CHECK (retry_jitter BETWEEN 0 AND 1), -- default 0.1
    -- max_attempts of a task published without one (default 1)
    max_attempts      integer CONSTRAINT group_max_attempts CHECK (max_attempts >= 1),
    -- a SQL consumer's lease when the task has no timeout (default 60 s)
    lease             double precision CONSTRAINT group_lease CHECK (lease > 0),
    -- final tasks older than this (by `finished`) are deleted; NULL keeps them
    retention         interval,
    -- attempt history (task_run) older than this is deleted; NULL keeps it
    history_retention interval,
    -- rows deleted per retention statement (default 1000)
    purge_batch       integer CONSTRAINT group_purge_batch CHECK (purge_batch >= 1)
);

-- ---------------------------------------------------------------------------------------------
-- Attempt history: one row per ended attempt; the task row shows the latest
-- ---------------------------------------------------------------------------------------------
CREATE TABLE long_task.task_run (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- no foreign key: history may outlive its task (retention deletes them separately)
    task_id     bigint      NOT NULL,
    group_id    integer     NOT NULL,
    run_id      uuid        NOT NULL,
    attempt     integer     NOT NULL,
    -- the node that ran it (negative: a SQL consumer session, minus its backend pid)
    worker_id   bigint,
    -- this attempt's outcome: CS, CF or CC (a retried failure is CF with retry_at set)
    state_id    char(2)     NOT NULL,
    error       text,
    exit_code   integer,
    exit_signal integer,
    stdout_tail text,
    stderr_tail text,
    result      jsonb,
    started     timestamptz,
    finished    timestamptz NOT NULL DEFAULT now(),
    -- when the next attempt may start (NULL: not retried)
    retry_at    timestamptz
);
CREATE INDEX task_run_task_idx ON long_task.task_run (task_id, attempt);
CREATE INDEX task_run_finished_idx ON long_task.task_run (group_id, finished);
ALTER TABLE long_task.task_run SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);

-- ---------------------------------------------------------------------------------------------
-- Formulas
-- ---------------------------------------------------------------------------------------------

-- The back-off before attempt `attempt + 1`, in seconds, after attempt number `attempt` (1-based)
-- failed:   d = min(base * 2^(attempt-1), max);   delay = d * (1 - jitter * random())
-- so the delay lies in [d * (1 - jitter), d]: never above `max`, never below d * (1 - jitter).
-- Task settings win over the group's, the group's over the built-in defaults (1 s, 300 s, 0.1).
CREATE FUNCTION long_task.retry_delay(p_group_id integer, p_attempt integer,
                                      p_base double precision, p_max double precision, p_jitter double precision)
RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT least(b.base * power(2::double precision, least(greatest(p_attempt, 1) - 1, 60)), b.max)
           * (1 - b.jitter * random())
      FROM (SELECT coalesce(p_base, s.retry_base, 1) AS base,
                   coalesce(p_max, s.retry_max, 300) AS max,
                   coalesce(p_jitter, s.retry_jitter, 0.1) AS jitter
              FROM (SELECT 1) one
              LEFT JOIN long_task.group_settings s ON s.group_id = p_group_id) b
$$;

-- A SQL consumer's lease in seconds: the task's timeout, else the group's lease, else 60 s.
CREATE FUNCTION long_task.lease_seconds(p_group_id integer, p_timeout double precision)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_timeout, (SELECT s.lease FROM long_task.group_settings s WHERE s.group_id = p_group_id), 60)
$$;

-- ---------------------------------------------------------------------------------------------
-- Ending attempts (nodes, consumers, lease expiry): one statement, guarded by run_id
-- ---------------------------------------------------------------------------------------------

-- Ends attempts: each outcome is written only where the task is still AE/AC under that run_id
-- (fencing). A run whose task was cancelled meanwhile ends CC. A failure (CF) with attempts left
-- goes back to AW with run_after = now() + retry_delay (or p_retry_at when given); the last
-- attempt's failure ends CF. Every ended attempt gets a long_task.task_run row.
-- Returns the rows written with their new state.
CREATE FUNCTION long_task.complete_runs(
    p_ids bigint[], p_run_ids uuid[], p_states text[], p_errors text[],
    p_exit_codes integer[], p_exit_signals integer[], p_stdout text[], p_stderr text[],
    p_results jsonb[], p_retry_at timestamptz[])
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('long_task.node_write', 'on', true);
    RETURN QUERY
    WITH o AS (
        SELECT u.*,
               old.worker_id AS old_worker_id, old.started AS old_started, old.attempt AS old_attempt
          FROM unnest(p_ids, p_run_ids, p_states, p_errors, p_exit_codes, p_exit_signals, p_stdout, p_stderr,
                      p_results, p_retry_at)
               AS u(id, run_id, state, error, exit_code, exit_signal, stdout_tail, stderr_tail, result, retry_at)
          JOIN long_task.task old ON old.id = u.id AND old.run_id = u.run_id
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = CASE WHEN t.state_id = 'AC' THEN 'CC'
                               WHEN o.state = 'CF' AND t.attempt < t.max_attempts THEN 'AW'
                               ELSE o.state END,
               run_after = CASE WHEN t.state_id <> 'AC' AND o.state = 'CF' AND t.attempt < t.max_attempts
                                THEN coalesce(o.retry_at,
                                              now() + make_interval(secs => long_task.retry_delay(
                                                  t.group_id, t.attempt, t.retry_base, t.retry_max, t.retry_jitter)))
                           END,
               error = CASE WHEN t.state_id = 'AC' AND o.state <> 'CC' THEN 'cancelled' ELSE o.error END,
               exit_code = o.exit_code, exit_signal = o.exit_signal,
               stdout_tail = o.stdout_tail, stderr_tail = o.stderr_tail,
               result = o.result, lease_until = NULL, finished = now()
          FROM o
         WHERE t.id = o.id AND t.run_id = o.run_id AND t.state_id IN ('AE', 'AC')
        RETURNING t.id, t.group_id, t.state_id, t.run_after, t.error, t.exit_code, t.exit_signal,
                  t.stdout_tail, t.stderr_tail, t.result, t.finished
    ), hist AS (
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        exit_code, exit_signal, stdout_tail, stderr_tail, result,
                                        started, finished, retry_at)
        SELECT upd.id, upd.group_id, o.run_id, o.old_attempt, o.old_worker_id,
               CASE WHEN upd.state_id = 'AW' THEN 'CF' ELSE upd.state_id END, upd.error,
               upd.exit_code, upd.exit_signal, upd.stdout_tail, upd.stderr_tail, upd.result,
               o.old_started, upd.finished, CASE WHEN upd.state_id = 'AW' THEN upd.run_after END
          FROM upd JOIN o ON o.id = upd.id
    )
    SELECT upd.id, upd.state_id FROM upd;
    PERFORM set_config('long_task.node_write', 'off', true);
END
$$;

-- Version 1's outcome write, now with retries and history (same signature, one round trip).
CREATE OR REPLACE FUNCTION long_task.finish_runs(
    p_ids bigint[], p_run_ids uuid[], p_states text[], p_errors text[],
    p_exit_codes integer[], p_exit_signals integer[], p_stdout text[], p_stderr text[])
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE sql AS $$
    SELECT c.id, c.state_id
      FROM long_task.complete_runs(p_ids, p_run_ids, p_states, p_errors, p_exit_codes, p_exit_signals,
                                   p_stdout, p_stderr, NULL::jsonb[], NULL::timestamptz[]) c
$$;

-- ---------------------------------------------------------------------------------------------
-- Claiming (nodes)
-- ---------------------------------------------------------------------------------------------

-- Claim up to n runnable tasks of a group for a node: waiting, not pinned elsewhere, run_after
-- reached, every dependency CS; process tasks when p_commands (a task with a command, or with
-- neither command nor topic), and topic tasks whose topic is in p_topics (the node's handlers).
-- Priority, then first in first out.
CREATE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer,
                                p_topics text[], p_commands boolean)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision,
               attempt integer, topic text, params jsonb, max_attempts integer)
LANGUAGE sql AS $$
    WITH picked AS (
        SELECT t.id
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
    )
    UPDATE long_task.task t
       SET state_id = 'AE', worker_id = p_worker_id, run_id = gen_random_uuid(),
           attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL, lease_until = NULL,
           error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL, result = NULL
      FROM picked
     WHERE t.id = picked.id
    RETURNING t.id, t.run_id, t.command, t.cwd, t.timeout, t.attempt, t.topic, t.params, t.max_attempts
$$;

-- Version 1's claim: process tasks only (same signature).
CREATE OR REPLACE FUNCTION long_task.claim(p_worker_id bigint, p_group_id integer, n integer)
RETURNS TABLE (id bigint, run_id uuid, command varchar[], cwd varchar, timeout double precision, attempt integer)
LANGUAGE sql AS $$
    SELECT c.id, c.run_id, c.command, c.cwd, c.timeout, c.attempt
      FROM long_task.claim(p_worker_id, p_group_id, n, '{}'::text[], true) c
$$;

-- ---------------------------------------------------------------------------------------------
-- SQL consumer API
-- ---------------------------------------------------------------------------------------------

-- Publishes one task and returns its id. A task with a topic and no command is a consumer /
-- handler task; with p_command it is a process task. With a dedup_key that an active task
-- (DR, AW, AE, AC) already holds, nothing is inserted and that task's id is returned.
-- Priority: lower runs first (the reference's convention). max_attempts NULL: the group's default.
CREATE FUNCTION long_task.publish(
    p_topic text, p_params jsonb DEFAULT NULL, p_run_after timestamptz DEFAULT NULL,
    p_timeout double precision DEFAULT NULL, p_priority integer DEFAULT 0, p_max_attempts integer DEFAULT NULL,
    p_group_id integer DEFAULT 0, p_dedup_key text DEFAULT NULL, p_depends_on bigint[] DEFAULT NULL,
    p_command varchar[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    LOOP
        INSERT INTO long_task.task (topic, params, state_id, run_after, timeout, priority, max_attempts,
                                    group_id, dedup_key, depends_on, command)
        VALUES (p_topic, p_params, 'AW', p_run_after, p_timeout, coalesce(p_priority, 0),
                coalesce(p_max_attempts,
                         (SELECT s.max_attempts FROM long_task.group_settings s WHERE s.group_id = p_group_id), 1),
                coalesce(p_group_id, 0), p_dedup_key, p_depends_on, p_command)
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state_id IN ('DR', 'AW', 'AE', 'AC')
        DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
        SELECT t.id INTO v_id FROM long_task.task t
         WHERE t.dedup_key = p_dedup_key AND t.state_id IN ('DR', 'AW', 'AE', 'AC');
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
        -- the holder ended between the two statements: try the insert again
    END LOOP;
END
$$;

CREATE TYPE long_task.bulk_task AS (
    topic        text,
    params       jsonb,
    run_after    timestamptz,
    timeout      double precision,
    priority     integer,
    max_attempts integer,
    dedup_key    text
);

-- Publishes many tasks in one statement (one notification) and returns their ids in input order
-- (an existing id where a dedup_key was taken, by an active task or earlier in the same batch).
CREATE FUNCTION long_task.publish_bulk(p_tasks long_task.bulk_task[], p_group_id integer DEFAULT 0)
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
    SELECT coalesce((SELECT s.max_attempts FROM long_task.group_settings s WHERE s.group_id = p_group_id), 1)
      INTO default_attempts;
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

-- Takes up to n waiting consumer tasks (a topic, no command) whose topic matches the SQL LIKE
-- pattern (NULL: any), of one group (NULL: any), with FOR UPDATE SKIP LOCKED: two consumers never
-- get the same task. Each gets a lease of its timeout (else the group's lease, else 60 s); an
-- unacknowledged lease is expired by the Scheduler (long_task.expire_leases). The worker_id of a
-- consumed task is minus the consumer's backend pid.
CREATE FUNCTION long_task.consume_topic(p_pattern text, n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE sql AS $$
    WITH picked AS (
        SELECT t.id
          FROM long_task.task t
         WHERE t.state_id = 'AW' AND t.command IS NULL AND t.topic IS NOT NULL
           AND (p_pattern IS NULL OR t.topic LIKE p_pattern)
           AND (p_group_id IS NULL OR t.group_id = p_group_id)
           AND t.worker_id IS NULL
           AND (t.run_after IS NULL OR t.run_after <= now())
           AND (t.depends_on IS NULL OR NOT EXISTS (
                   SELECT 1 FROM long_task.task d WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS'))
         ORDER BY t.priority, t.last_state_change, t.id
         LIMIT n
           FOR UPDATE SKIP LOCKED
    )
    UPDATE long_task.task t
       SET state_id = 'AE', worker_id = -pg_backend_pid(), run_id = gen_random_uuid(),
           attempt = t.attempt + 1, started = now(), finished = NULL, run_after = NULL,
           lease_until = now() + make_interval(secs => long_task.lease_seconds(t.group_id, t.timeout)),
           error = NULL, exit_code = NULL, exit_signal = NULL, stdout_tail = NULL, stderr_tail = NULL, result = NULL
      FROM picked
     WHERE t.id = picked.id
    RETURNING t.id, t.run_id, t.topic, t.params, t.attempt, t.max_attempts, t.lease_until, t.group_id
$$;

CREATE FUNCTION long_task.consume(n integer, p_group_id integer DEFAULT NULL)
RETURNS TABLE (id bigint, run_id uuid, topic text, params jsonb, attempt integer, max_attempts integer,
               lease_until timestamptz, group_id integer)
LANGUAGE sql AS $$
    SELECT * FROM long_task.consume_topic(NULL, n, p_group_id)
$$;

-- Acknowledges a consumed task: CS with its result (CC if it was cancelled meanwhile). With
-- p_run_id (from consume) the write is fenced: an ack after the lease expired and the task was
-- handed to another consumer changes nothing. Returns the new state, NULL when nothing changed.
CREATE FUNCTION long_task.ack(p_id bigint, p_result jsonb DEFAULT NULL, p_run_id uuid DEFAULT NULL)
RETURNS char(2)
LANGUAGE sql AS $$
    SELECT c.state_id
      FROM long_task.task t,
           LATERAL long_task.complete_runs(ARRAY[t.id], ARRAY[t.run_id], ARRAY['CS'], ARRAY[NULL::text],
                                           ARRAY[NULL::integer], ARRAY[NULL::integer], ARRAY[NULL::text],
                                           ARRAY[NULL::text], ARRAY[p_result], ARRAY[NULL::timestamptz]) c
     WHERE t.id = p_id AND t.state_id IN ('AE', 'AC') AND (p_run_id IS NULL OR t.run_id = p_run_id)
$$;

-- Acknowledges many consumed tasks in one statement (the fast path for batch consumers):
-- ack of each id with the matching result (p_results NULL: no results). Returns the ids written
-- and their new state; ids not running are left out.
CREATE FUNCTION long_task.ack_many(p_ids bigint[], p_results jsonb[] DEFAULT NULL)
RETURNS TABLE (id bigint, state_id char(2))
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    run_ids uuid[];
    results jsonb[];
BEGIN
    SELECT array_agg(t.id ORDER BY a.ord), array_agg(t.run_id ORDER BY a.ord), array_agg(a.result ORDER BY a.ord)
      INTO ids, run_ids, results
      FROM unnest(p_ids, p_results) WITH ORDINALITY AS a(id, result, ord)
      JOIN long_task.task t ON t.id = a.id AND t.state_id IN ('AE', 'AC');
    IF ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT c.id, c.state_id
          FROM long_task.complete_runs(ids, run_ids, array_fill('CS'::text, ARRAY[cardinality(ids)]),
                                       NULL, NULL, NULL, NULL, NULL, results, NULL) c;
END
$$;

-- Reports a consumed task as failed: back to AW at p_retry_at (NULL: now + retry_delay) while
-- attempts remain, else CF with the error. Fenced by p_run_id like ack. Returns the new state.
CREATE FUNCTION long_task.nack(p_id bigint, p_error text DEFAULT NULL, p_retry_at timestamptz DEFAULT NULL,
                               p_run_id uuid DEFAULT NULL)
RETURNS char(2)
LANGUAGE sql AS $$
    SELECT c.state_id
      FROM long_task.task t,
           LATERAL long_task.complete_runs(ARRAY[t.id], ARRAY[t.run_id], ARRAY['CF'], ARRAY[p_error],
                                           ARRAY[NULL::integer], ARRAY[NULL::integer], ARRAY[NULL::text],
                                           ARRAY[NULL::text], ARRAY[NULL::jsonb], ARRAY[p_retry_at]) c
     WHERE t.id = p_id AND t.state_id IN ('AE', 'AC') AND (p_run_id IS NULL OR t.run_id = p_run_id)
$$;

-- Fails every consumer attempt of a group whose lease has passed (error 'lease expired'; retried
-- while attempts remain, like any failure; a cancel-requested one ends CC). Returns how many, and
-- the seconds until the next lease deadline of the group (NULL: none).
CREATE FUNCTION long_task.expire_leases(p_group_id integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (expired integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    run_ids uuid[];
    n integer := 0;
BEGIN
    SELECT array_agg(x.id), array_agg(x.run_id) INTO ids, run_ids
      FROM (SELECT t.id, t.run_id FROM long_task.task t
             WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL AND t.lease_until <= now()
               AND t.state_id IN ('AE', 'AC')
             ORDER BY t.lease_until
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) x;
    IF ids IS NOT NULL THEN
        SELECT count(*) INTO n
          FROM long_task.complete_runs(ids, run_ids, array_fill('CF'::text, ARRAY[cardinality(ids)]),
                                       array_fill('lease expired'::text, ARRAY[cardinality(ids)]),
                                       NULL, NULL, NULL, NULL, NULL, NULL);
    END IF;
    RETURN QUERY
        SELECT n, CASE WHEN n >= p_limit THEN 0::double precision
                       ELSE extract(epoch FROM min(t.lease_until) - now())::double precision END
          FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.lease_until IS NOT NULL AND t.state_id IN ('AE', 'AC');
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------------------------

-- Deletes, in one batch, final tasks of a group older than its retention (by `finished`; never a
-- task that still has a schedule), and attempt history older than its history_retention.
-- Returns the rows deleted and the seconds until the next task falls out of retention
-- (0: a full batch, go again; NULL: retention off or nothing final).
CREATE FUNCTION long_task.purge_finished(p_group_id integer)
RETURNS TABLE (deleted integer, next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    s long_task.group_settings;
    batch integer;
    n_tasks integer := 0;
    n_runs integer := 0;
    next_in double precision;
BEGIN
    SELECT * INTO s FROM long_task.group_settings g WHERE g.group_id = p_group_id;
    batch := coalesce(s.purge_batch, 1000);
    IF s.retention IS NOT NULL THEN
        DELETE FROM long_task.task t
         WHERE t.id IN (SELECT x.id FROM long_task.task x
                         WHERE x.group_id = p_group_id AND x.state_id IN ('CS', 'CF', 'CC')
                           AND x.finished < now() - s.retention AND x.next_start IS NULL
                         ORDER BY x.finished
                         LIMIT batch
                           FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS n_tasks = ROW_COUNT;
        SELECT extract(epoch FROM min(x.finished) + s.retention - now()) INTO next_in
          FROM long_task.task x
         WHERE x.group_id = p_group_id AND x.state_id IN ('CS', 'CF', 'CC') AND x.next_start IS NULL;
    END IF;
    IF s.history_retention IS NOT NULL THEN
        DELETE FROM long_task.task_run r
         WHERE r.id IN (SELECT x.id FROM long_task.task_run x
                         WHERE x.group_id = p_group_id AND x.finished < now() - s.history_retention
                         ORDER BY x.finished
                         LIMIT batch);
        GET DIAGNOSTICS n_runs = ROW_COUNT;
        next_in := least(next_in, (SELECT extract(epoch FROM min(x.finished) + s.history_retention - now())
                                     FROM long_task.task_run x WHERE x.group_id = p_group_id));
    END IF;
    IF n_tasks >= batch OR n_runs >= batch THEN
        next_in := 0;
    END IF;
    RETURN QUERY SELECT n_tasks + n_runs, CASE WHEN next_in IS NOT NULL THEN greatest(next_in, 0) END;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The Scheduler's tick: everything time-driven of a group, in one round trip
-- ---------------------------------------------------------------------------------------------

-- Fires due schedules, expires leases, applies retention, and wakes the group's nodes and
-- consumers (NOTIFY 'wake') when retries came due since the previous tick (p_since: the db_now
-- it returned; a 5 s margin covers a retry committed after that tick's snapshot). Returns what it
-- did, the database time, and the seconds until the next due moment of any kind (NULL: none).
CREATE FUNCTION long_task.scheduler_tick(p_group_id integer, p_since timestamptz DEFAULT NULL)
RETURNS TABLE (fired integer, expired integer, purged integer, woken integer, db_now timestamptz,
               next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    e record;
    p record;
    n_woken integer;
    next_retry double precision;
BEGIN
    SELECT * INTO f FROM long_task.fire_schedules(p_group_id);
    SELECT * INTO e FROM long_task.expire_leases(p_group_id);
    SELECT * INTO p FROM long_task.purge_finished(p_group_id);
    SELECT count(*) INTO n_woken
      FROM long_task.task t
     WHERE t.group_id = p_group_id AND t.state_id = 'AW' AND t.run_after IS NOT NULL
       AND t.run_after <= now() AND (p_since IS NULL OR t.run_after > p_since - interval '5 seconds');
    IF n_woken > 0 THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'wake');
    END IF;
    SELECT extract(epoch FROM min(t.run_after) - now()) INTO next_retry
      FROM long_task.task t
     WHERE t.group_id = p_group_id AND t.state_id = 'AW' AND t.run_after IS NOT NULL AND t.run_after > now();
    next_retry := least(f.next_due_in, e.next_due_in, p.next_due_in, next_retry);
    -- something already due (a full batch, a row locked by another session): again soon, not in a
    -- tight loop
    RETURN QUERY SELECT f.fired, e.expired, p.deleted, n_woken, now(),
                        CASE WHEN next_retry IS NOT NULL THEN greatest(next_retry, 0.01) END;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Triggers
-- ---------------------------------------------------------------------------------------------

-- Timers: a retry delay or a lease deadline was set, so the group's Schedulers re-arm (payload
-- 'sched', one per statement and group, like the version-1 notifications).
CREATE FUNCTION long_task.task_notify_timers() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN
            SELECT DISTINCT n.group_id FROM new_rows n
             WHERE (n.state_id = 'AW' AND n.run_after > now()) OR n.lease_until IS NOT NULL
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), 'sched');
        END LOOP;
    ELSE
        FOR r IN
            SELECT DISTINCT n.group_id
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE (n.state_id = 'AW' AND n.run_after > now() AND n.run_after IS DISTINCT FROM o.run_after)
                OR (n.lease_until IS NOT NULL AND n.lease_until IS DISTINCT FROM o.lease_until)
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), 'sched');
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_notify_timers_insert AFTER INSERT ON long_task.task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_notify_timers();
CREATE TRIGGER task_notify_timers_update AFTER UPDATE ON long_task.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_notify_timers();

-- Multistage, at insert: every dependency must exist; a task whose dependency already ended CF
-- or CC is cancelled at once (runs after task_before_insert: trigger names sort). A task's
-- depends_on is read at insert only: changing it later is not supported.
CREATE FUNCTION long_task.task_deps_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    IF NEW.depends_on IS NULL OR cardinality(NEW.depends_on) = 0 THEN
        RETURN NEW;
    END IF;
    -- Lock the dependencies (FOR SHARE conflicts with their UPDATE): a dependency ending in a
    -- concurrent transaction either waits for this insert to commit (and then finds this task) or
    -- has committed before the checks below (which then see its final state). Without it, a
    -- dependent inserted while its dependency fails could wait forever.
    PERFORM 1 FROM long_task.task t WHERE t.id = ANY (NEW.depends_on) FOR SHARE;
    SELECT d.id INTO missing FROM unnest(NEW.depends_on) d(id)
     WHERE NOT EXISTS (SELECT 1 FROM long_task.task t WHERE t.id = d.id) LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'task depends on task %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM long_task.task t WHERE t.id = ANY (NEW.depends_on) AND t.state_id IN ('CF', 'CC')) THEN
        NEW.state_id := 'CC';
        NEW.error := 'dependency failed';
        NEW.finished := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER task_deps_before_insert BEFORE INSERT ON long_task.task
    FOR EACH ROW EXECUTE FUNCTION long_task.task_deps_before_insert();

-- Multistage, when tasks end: dependents of a CF/CC task (or of a deleted unfinished one) end CC
-- with 'dependency failed' (cascading down the chain: this trigger fires again for them);
-- dependents of a CS task may have become runnable, so their groups are woken.
CREATE FUNCTION long_task.task_deps_after() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    done bigint[];
    failed bigint[];
    r record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(n.id) FILTER (WHERE n.state_id = 'CS'),
               array_agg(n.id) FILTER (WHERE n.state_id IN ('CF', 'CC'))
          INTO done, failed
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state_id <> o.state_id AND n.state_id IN ('CS', 'CF', 'CC');
    ELSE
        SELECT array_agg(o.id) INTO failed FROM old_rows o WHERE o.state_id <> 'CS';
    END IF;
    IF failed IS NOT NULL THEN
        UPDATE long_task.task t
           SET state_id = 'CC', error = 'dependency failed'
         WHERE t.depends_on IS NOT NULL AND t.depends_on && failed AND t.state_id IN ('DR', 'AW');
    END IF;
    IF done IS NOT NULL THEN
        FOR r IN
            SELECT DISTINCT t.group_id FROM long_task.task t
             WHERE t.depends_on IS NOT NULL AND t.depends_on && done AND t.state_id IN ('DR', 'AW')
        LOOP
            PERFORM pg_notify(long_task.channel(r.group_id), 'wake');
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_deps_after_update AFTER UPDATE ON long_task.task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_deps_after();
CREATE TRIGGER task_deps_after_delete AFTER DELETE ON long_task.task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION long_task.task_deps_after();

-- ---------------------------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------------------------

-- Attempts in progress, by nodes (worker_id > 0) and SQL consumers (worker_id < 0).
CREATE VIEW long_task.running AS
    SELECT t.id, t.group_id, t.topic, t.command, t.state_id, t.worker_id, w.node_name, t.run_id,
           t.attempt, t.max_attempts, t.started, now() - t.started AS running_for, t.timeout,
           t.lease_until, t.params
      FROM long_task.task t
      LEFT JOIN long_task.worker w ON w.id = t.worker_id
     WHERE t.state_id IN ('AE', 'AC');

-- Attempts past their deadline: a consumer lease that passed (the Scheduler fails it shortly), or
-- a node task running longer than its timeout (its node should have killed it).
CREATE VIEW long_task.expired AS
    SELECT r.*, coalesce(r.lease_until, r.started + make_interval(secs => r.timeout)) AS deadline
      FROM long_task.running r
     WHERE (r.lease_until IS NOT NULL AND r.lease_until <= now())
        OR (r.lease_until IS NULL AND r.timeout IS NOT NULL
            AND r.started + make_interval(secs => r.timeout) <= now());

-- Queue depth per group, topic and state, with the age of the oldest waiting task (a full scan:
-- for monitoring, not for a hot loop).
CREATE VIEW long_task.queue_stats AS
    SELECT t.group_id, t.topic, t.state_id, count(*) AS tasks,
           max(now() - t.last_state_change) FILTER (WHERE t.state_id = 'AW') AS oldest_waiting,
           count(*) FILTER (WHERE t.state_id = 'AW' AND t.run_after > now()) AS delayed
      FROM long_task.task t
     GROUP BY t.group_id, t.topic, t.state_id;
