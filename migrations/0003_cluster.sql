-- pgtaskd schema, version 3: clustering (DESIGN.md §4) — coordinator election with a fencing term,
-- dead-node detection and reassignment, the event log, and the lost-task re-run setting.
--
-- Advisory lock keys (two-int form; must match src/db/queries.rs):
--   (1886678529 = 0x70746e01, worker_id)  a node's liveness lock, held by its membership session
--   (1886678530 = 0x70746e02, group_id)   a group's coordinator lock, held by its coordinator session
-- Node sessions are named `pgtaskd w<worker_id> <purpose>` (application_name), so the coordinator
-- can end every session of a hung node.
-- A node that registers notifies its group channel with payload `peer`, so the coordinator starts
-- watching its liveness lock (a shared request, granted the moment the node's session ends).

CREATE FUNCTION long_task.ns_node() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678529 $$;
CREATE FUNCTION long_task.ns_group() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1886678530 $$;

-- ---------------------------------------------------------------------------------------------
-- Lost tasks: how often a task whose node died mid-run is run again
-- ---------------------------------------------------------------------------------------------
-- Per task (NULL: the group's setting), per group in long_task.group_settings (NULL or no row: 1,
-- i.e. a lost task is re-run once).
ALTER TABLE long_task.task
    ADD COLUMN max_lost_reruns integer CONSTRAINT task_max_lost_reruns CHECK (max_lost_reruns >= 0),
    ADD COLUMN lost_reruns     integer NOT NULL DEFAULT 0;

ALTER TABLE long_task.group_settings
    ADD COLUMN max_lost_reruns integer CONSTRAINT group_max_lost_reruns CHECK (max_lost_reruns >= 0); -- default 1

-- A task queued again from a final state (or a draft) starts with a fresh lost-run count.
CREATE FUNCTION long_task.task_reset_lost() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state_id = 'AW' AND OLD.state_id IN ('CS', 'CF', 'CC', 'DR') THEN
        NEW.lost_reruns := 0;
    END IF;
    RETURN NEW;
END
$$;
-- (fires after task_before_update: triggers of one event run in name order)
CREATE TRIGGER task_before_update_reset_lost BEFORE UPDATE ON long_task.task
    FOR EACH ROW EXECUTE FUNCTION long_task.task_reset_lost();

-- ---------------------------------------------------------------------------------------------
-- The event log: what the cluster did, by whom, under which term
-- ---------------------------------------------------------------------------------------------
--   kind: elected · node_dead · sessions_terminated · requeued · lost_failed · lost_cancelled ·
--         recovered (a node handed back its own tasks at restart or shutdown) ·
--         coordinator_deposed · fired · released
CREATE TABLE long_task.event (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    group_id     integer     NOT NULL,
    -- the coordinator term under which it happened (NULL: not a coordinator action)
    term         bigint,
    -- the node that did it
    by_worker_id bigint,
    kind         text        NOT NULL,
    -- the node it happened to
    worker_id    bigint,
    task_id      bigint,
    run_id       uuid,
    detail       text
);
CREATE INDEX event_task_idx ON long_task.event (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX event_at_idx ON long_task.event (at);

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- Granted exclusive advisory locks (two-int form) of one namespace in this database: key → holder
-- pid. (Shared holds are the coordinator's watchers, waiting for a node's lock to come free: they
-- say nothing about the node's liveness.)
CREATE FUNCTION long_task.advisory_holders(p_ns integer)
RETURNS TABLE (key bigint, pid integer)
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint, l.pid
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.mode = 'ExclusiveLock'
       AND l.classid = p_ns::oid
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;

-- Ends every session of a node in this database (named `pgtaskd w<id> …`, or holding its
-- liveness lock). Signals without waiting (a wait of up to 1 s per session would stall the
-- coordinator's round); the run_id guard covers a write that is still in flight. Returns how
-- many sessions were signalled.
CREATE FUNCTION long_task.terminate_node_sessions(p_worker_id bigint)
RETURNS integer
LANGUAGE sql AS $$
    SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid))::integer
      FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
       AND (a.application_name LIKE 'pgtaskd w' || p_worker_id || ' %'
            OR a.pid IN (SELECT h.pid FROM long_task.advisory_holders(long_task.ns_node()) h
                          WHERE h.key = p_worker_id))
$$;

-- Hands back running tasks whose node was lost: AE → AW while lost re-runs remain (a new run_id
-- comes with the next claim, attempt + 1), else CF 'worker lost'; pinned tasks stay pinned.
-- Only rows still AE under the given run_ids change. Returns each row's old run_id and new state.
CREATE FUNCTION long_task.requeue_lost(p_ids bigint[], p_run_ids uuid[], p_reason text)
RETURNS TABLE (id bigint, run_id uuid, state_id char(2))
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT t.id, t.run_id, t.attempt, t.worker_id, t.started,
               t.lost_reruns < coalesce(t.max_lost_reruns, g.max_lost_reruns, 1) AS rerun
          FROM long_task.task t
          JOIN unnest(p_ids, p_run_ids) AS r(id, run_id) ON r.id = t.id AND r.run_id = t.run_id
          LEFT JOIN long_task.group_settings g ON g.group_id = t.group_id
         WHERE t.state_id = 'AE'
           FOR UPDATE OF t
    ), upd AS (
        UPDATE long_task.task t
           SET state_id = CASE WHEN lost.rerun THEN 'AW' ELSE 'CF' END,
               lost_reruns = t.lost_reruns + CASE WHEN lost.rerun THEN 1 ELSE 0 END,
               error = CASE WHEN lost.rerun THEN p_reason || ' (re-queued)' ELSE p_reason END
          FROM lost
         WHERE t.id = lost.id
        RETURNING t.id, t.group_id, lost.run_id, lost.attempt, lost.worker_id, lost.started, t.state_id
    ), hist AS (
        -- the lost attempt ends in the attempt history like any other (CF, retried when re-queued)
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        started, retry_at)
        SELECT upd.id, upd.group_id, upd.run_id, upd.attempt, upd.worker_id, 'CF', p_reason,
               upd.started, CASE WHEN upd.state_id = 'AW' THEN now() END
          FROM upd
    )
    SELECT upd.id, upd.run_id, upd.state_id FROM upd
$$;

-- ---------------------------------------------------------------------------------------------
-- Election
-- ---------------------------------------------------------------------------------------------

-- Whether this session holds the coordinator lock of a group.
CREATE FUNCTION long_task.holds_group_lock(p_group_id integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM long_task.advisory_holders(long_task.ns_group()) h
                    WHERE h.key = p_group_id::oid::bigint AND h.pid = pg_backend_pid())
$$;

-- Called by the session that just took the group lock: a new term, in one statement.
CREATE FUNCTION long_task.become_coordinator(p_group_id integer, p_worker_id bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_term bigint;
BEGIN
    IF NOT long_task.holds_group_lock(p_group_id) THEN
        RAISE EXCEPTION 'this session does not hold the coordinator lock of group %', p_group_id
            USING ERRCODE = 'lock_not_available';
    END IF;
    INSERT INTO long_task.coordinator AS c (group_id, term, worker_id, elected_at)
    VALUES (p_group_id, 1, p_worker_id, now())
    ON CONFLICT (group_id) DO UPDATE
       SET term = c.term + 1, worker_id = EXCLUDED.worker_id, elected_at = now()
    RETURNING c.term INTO new_term;
    INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id)
    VALUES (p_group_id, new_term, p_worker_id, 'elected', p_worker_id);
    RETURN new_term;
END
$$;

-- Called by a node waiting for the group lock when its wait timed out: when the lock's holder is
-- a node whose heartbeat is older than p_timeout (hung, stopped, partitioned), end its sessions
-- so the lock is freed. Returns the worker id deposed, or NULL.
CREATE FUNCTION long_task.depose_stale_coordinator(p_group_id integer, p_by_worker_id bigint,
                                                   p_timeout double precision)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    holder bigint;
    c_term bigint;
BEGIN
    SELECT substring(a.application_name FROM '^pgtaskd w([0-9]+) ')::bigint INTO holder
      FROM long_task.advisory_holders(long_task.ns_group()) h
      JOIN pg_stat_activity a ON a.pid = h.pid
     WHERE h.key = p_group_id::oid::bigint;
    IF holder IS NULL OR holder = p_by_worker_id THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM long_task.worker w WHERE w.id = holder
                 AND w.heartbeat_at >= now() - make_interval(secs => p_timeout)) THEN
        RETURN NULL;
    END IF;
    PERFORM long_task.terminate_node_sessions(holder);
    SELECT c.term INTO c_term FROM long_task.coordinator c WHERE c.group_id = p_group_id;
    INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, detail)
    VALUES (p_group_id, c_term, p_by_worker_id, 'coordinator_deposed', holder,
            'heartbeat older than ' || p_timeout || ' s: sessions terminated');
    RETURN holder;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The coordinator's round, on the coordinator's own session: when a watcher saw a node's liveness
-- lock come free, when the earliest heartbeat deadline passes, and at least every p_timeout.
-- Idle, it only reads (pg_locks, the worker rows, the running tasks of the group). A node is dead
-- when its liveness lock is free or its heartbeat is older than p_timeout; a hung node's sessions
-- are ended first. Every write happens under the term (row lock on the coordinator row).
-- Returns one row per action; kind 'deposed' means this session is no longer the coordinator;
-- kind 'live' (not an action) names each live node with the seconds until its heartbeat
-- deadline (due_in), so the caller can watch its lock and sleep until the earliest deadline.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION long_task.coordinate(p_group_id integer, p_worker_id bigint, p_term bigint,
                                     p_timeout double precision)
RETURNS TABLE (kind text, worker_id bigint, task_id bigint, run_id uuid, detail text,
               due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    live bigint[];
    w record;
    r record;
    ids bigint[];
    run_ids uuid[];
BEGIN
    IF NOT long_task.holds_group_lock(p_group_id)
       OR NOT EXISTS (SELECT 1 FROM long_task.coordinator c
                       WHERE c.group_id = p_group_id AND c.term = p_term AND c.worker_id = p_worker_id) THEN
        RETURN QUERY SELECT 'deposed'::text, p_worker_id, NULL::bigint, NULL::uuid,
                            'this session no longer holds term ' || p_term, NULL::double precision;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(h.key), '{}') INTO live FROM long_task.advisory_holders(long_task.ns_node()) h;

    FOR w IN
        SELECT c.id, NOT (c.id = ANY (live)) AS lock_free, wk.heartbeat_at,
               wk.heartbeat_at IS NULL OR wk.heartbeat_at < now() - make_interval(secs => p_timeout) AS stale
          FROM (SELECT x.id FROM long_task.worker x WHERE x.group_id = p_group_id AND x.active
                UNION
                SELECT t.worker_id FROM long_task.task t
                 WHERE t.state_id IN ('AE', 'AC') AND t.group_id = p_group_id AND t.worker_id > 0) c
                 -- (a negative worker_id is a SQL consumer's lease: expire_leases handles those)
          LEFT JOIN long_task.worker wk ON wk.id = c.id
         WHERE c.id <> p_worker_id
    LOOP
        IF NOT (w.lock_free OR w.stale) THEN
            RETURN QUERY SELECT 'live'::text, w.id, NULL::bigint, NULL::uuid, NULL::text,
                extract(epoch FROM w.heartbeat_at + make_interval(secs => p_timeout) - now())::double precision;
            CONTINUE;
        END IF;
        -- A dead node: act under the term (blocks a concurrent election until we commit).
        PERFORM 1 FROM long_task.coordinator c
          WHERE c.group_id = p_group_id AND c.term = p_term AND c.worker_id = p_worker_id
            FOR UPDATE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'deposed'::text, p_worker_id, NULL::bigint, NULL::uuid,
                                'term ' || p_term || ' was superseded', NULL::double precision;
            RETURN;
        END IF;
        IF NOT w.lock_free THEN
            -- Hung, stopped or partitioned but its session lives: fence it before moving anything.
            INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, detail)
            VALUES (p_group_id, p_term, p_worker_id, 'sessions_terminated', w.id,
                    long_task.terminate_node_sessions(w.id) || ' session(s) ended');
        END IF;
        INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, detail)
        VALUES (p_group_id, p_term, p_worker_id, 'node_dead', w.id,
                CASE WHEN w.lock_free THEN 'liveness lock free'
                     ELSE 'heartbeat older than ' || p_timeout || ' s (last ' || coalesce(w.heartbeat_at::text, 'never') || ')' END);
        RETURN QUERY SELECT 'node_dead'::text, w.id, NULL::bigint, NULL::uuid,
                            CASE WHEN w.lock_free THEN 'liveness lock free' ELSE 'heartbeat stale' END,
                            NULL::double precision;
        UPDATE long_task.worker x SET active = false, task_count = 0, stopped_at = now(), locked_until = NULL
         WHERE x.id = w.id AND x.active;

        FOR r IN
            UPDATE long_task.task t SET state_id = 'CC', error = 'cancelled (worker lost)'
             WHERE t.worker_id = w.id AND t.group_id = p_group_id AND t.state_id = 'AC'
            RETURNING t.id, t.run_id
        LOOP
            INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, task_id, run_id)
            VALUES (p_group_id, p_term, p_worker_id, 'lost_cancelled', w.id, r.id, r.run_id);
            RETURN QUERY SELECT 'lost_cancelled'::text, w.id, r.id, r.run_id, NULL::text, NULL::double precision;
        END LOOP;

        SELECT coalesce(array_agg(t.id), '{}'), coalesce(array_agg(t.run_id), '{}') INTO ids, run_ids
          FROM long_task.task t
         WHERE t.worker_id = w.id AND t.group_id = p_group_id AND t.state_id = 'AE';
        FOR r IN SELECT * FROM long_task.requeue_lost(ids, run_ids, 'worker lost') LOOP
            INSERT INTO long_task.event (group_id, term, by_worker_id, kind, worker_id, task_id, run_id)
            VALUES (p_group_id, p_term, p_worker_id,
                    CASE WHEN r.state_id = 'AW' THEN 'requeued' ELSE 'lost_failed' END, w.id, r.id, r.run_id);
            RETURN QUERY SELECT CASE WHEN r.state_id = 'AW' THEN 'requeued' ELSE 'lost_failed' END,
                                w.id, r.id, r.run_id, NULL::text, NULL::double precision;
        END LOOP;
    END LOOP;
END
$$;

-- A node that fenced itself (cut off past its heartbeat timeout) killed these runs: hand them back
-- like a lost node's, unless the coordinator already did (run_id guard).
CREATE FUNCTION long_task.release_runs(p_worker_id bigint, p_ids bigint[], p_run_ids uuid[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ids bigint[];
    run_ids uuid[];
    n integer := 0;
BEGIN
    SELECT coalesce(array_agg(i.id), '{}'), coalesce(array_agg(i.run_id), '{}') INTO ids, run_ids
      FROM unnest(p_ids, p_run_ids) AS i(id, run_id)
      JOIN long_task.task t ON t.id = i.id AND t.worker_id = p_worker_id;
    FOR r IN
        SELECT l.id, l.run_id, l.state_id, t.group_id
          FROM long_task.requeue_lost(ids, run_ids, 'worker lost') l
          JOIN long_task.task t ON t.id = l.id
    LOOP
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        VALUES (r.group_id, p_worker_id, 'released', p_worker_id, r.id, r.run_id,
                'self-fenced; now ' || r.state_id);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Schedules fire only under the coordinator's term
-- ---------------------------------------------------------------------------------------------
-- long_task.scheduler_tick under the coordinator's term: fired = -1 when the term is not (or no
-- longer) this node's, and then nothing happened. A share lock on the coordinator row holds off a
-- new election until this tick commits.
CREATE FUNCTION long_task.scheduler_tick_as(p_group_id integer, p_worker_id bigint, p_term bigint,
                                            p_since timestamptz DEFAULT NULL)
RETURNS TABLE (fired integer, expired integer, purged integer, woken integer, db_now timestamptz,
               next_due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    PERFORM 1 FROM long_task.coordinator c
      WHERE c.group_id = p_group_id AND c.term = p_term AND c.worker_id = p_worker_id
        FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT -1, 0, 0, 0, now(), NULL::double precision;
        RETURN;
    END IF;
    SELECT * INTO t FROM long_task.scheduler_tick(p_group_id, p_since);
    IF t.fired > 0 THEN
        INSERT INTO long_task.event (group_id, term, by_worker_id, kind, detail)
        VALUES (p_group_id, p_term, p_worker_id, 'fired', t.fired || ' schedule(s)');
    END IF;
    RETURN QUERY SELECT t.fired, t.expired, t.purged, t.woken, t.db_now, t.next_due_in;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- A node's own recovery (restart, shutdown) is recorded too, so every re-run has an event.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION long_task.recover_worker(p_worker_id bigint, p_reason text)
RETURNS TABLE (requeued bigint, cancelled bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n_cancelled bigint;
    n_requeued bigint;
BEGIN
    WITH c AS (
        UPDATE long_task.task t
           SET state_id = 'CC', error = 'cancelled (' || p_reason || ')'
         WHERE t.worker_id = p_worker_id AND t.state_id = 'AC'
        RETURNING t.id, t.run_id, t.group_id
    ), e AS (
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        SELECT c.group_id, p_worker_id, 'recovered', p_worker_id, c.id, c.run_id, p_reason || ': now CC' FROM c
        RETURNING 1
    )
    SELECT count(*) INTO n_cancelled FROM e;
    WITH r AS (
        SELECT t.id, t.run_id, t.group_id, t.attempt, t.started FROM long_task.task t
         WHERE t.worker_id = p_worker_id AND t.state_id = 'AE'
           FOR UPDATE
    ), u AS (
        UPDATE long_task.task t
           SET state_id = 'AW', worker_id = CASE WHEN t.pinned THEN t.worker_id END,
               error = p_reason
          FROM r
         WHERE t.id = r.id
        RETURNING t.id
    ), e AS (
        INSERT INTO long_task.event (group_id, by_worker_id, kind, worker_id, task_id, run_id, detail)
        SELECT r.group_id, p_worker_id, 'recovered', p_worker_id, r.id, r.run_id, p_reason || ': now AW'
          FROM r JOIN u ON u.id = r.id
        RETURNING 1
    ), hist AS (
        INSERT INTO long_task.task_run (task_id, group_id, run_id, attempt, worker_id, state_id, error,
                                        started, retry_at)
        SELECT r.id, r.group_id, r.run_id, r.attempt, p_worker_id, 'CF', p_reason, r.started, now()
          FROM r JOIN u ON u.id = r.id
    )
    SELECT count(*) INTO n_requeued FROM e;
    RETURN QUERY SELECT n_requeued, n_cancelled;
END
$$;
