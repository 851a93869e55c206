-- The coordinator's round, on the coordinator's own session: when a watcher saw a node's liveness
-- lock come free, when the earliest heartbeat deadline passes, and at least every p_timeout.
-- Idle, it only reads (pg_locks, the worker rows, the running tasks of the group). A node is dead
-- when its liveness lock is free or its heartbeat is older than p_timeout, read once and checked
-- again just before acting (its worker row locked): a node back meanwhile is left alone; a hung
-- node's sessions are ended first. Every write happens under the term (row lock on the
-- coordinator row).
-- Returns one row per action; kind 'deposed' means this session is no longer the coordinator;
-- kind 'live' (not an action) names each live node with the seconds until its heartbeat
-- deadline (due_in), so the caller can watch its lock and sleep until the earliest deadline.
-- Kind 'reconnecting' (not an action either) names a node whose lock is free but whose last
-- heartbeat predates this coordinator's session: its session most likely ended with everyone's
-- (a PostgreSQL restart or a failover to a standby) and it is reconnecting, so it is dead only
-- once its heartbeat is older than p_timeout (due_in says when); a lock that comes free after the
-- node has beaten on this server still means death at once.
CREATE OR REPLACE FUNCTION long_task.coordinate(p_group_id integer, p_worker_id bigint, p_term bigint,
                                     p_timeout double precision)
RETURNS TABLE (kind text, worker_id bigint, task_id bigint, run_id uuid, detail text,
               due_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    live bigint[];
    w record;
    session_start timestamptz := (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a);
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
        IF NOT w.stale AND w.heartbeat_at < session_start THEN
            RETURN QUERY SELECT 'reconnecting'::text, w.id, NULL::bigint, NULL::uuid, NULL::text,
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
        -- The loop's read may be old by now (the lock above waits for a scheduler tick's share
        -- lock, say): a node that came back meanwhile (restarted, or beat again) holds its lock
        -- and has a fresh heartbeat; it keeps its runs. With its worker row locked, a
        -- registration or a heartbeat waits for this round's commit, so the answer holds.
        PERFORM 1 FROM long_task.worker x WHERE x.id = w.id FOR UPDATE;
        IF EXISTS (SELECT 1 FROM long_task.worker x
                    WHERE x.id = w.id AND x.heartbeat_at >= now() - make_interval(secs => p_timeout))
           AND EXISTS (SELECT 1 FROM long_task.advisory_holders(long_task.ns_node()) h WHERE h.key = w.id) THEN
            RETURN QUERY
                SELECT 'live'::text, w.id, NULL::bigint, NULL::uuid, NULL::text,
                       extract(epoch FROM x.heartbeat_at + make_interval(secs => p_timeout) - now())::double precision
                  FROM long_task.worker x WHERE x.id = w.id;
            CONTINUE;
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

        -- its runs: the one hand-back rule (events recorded under this term)
        RETURN QUERY
            SELECT h.kind, w.id, h.task_id, h.run_id, NULL::text, NULL::double precision
              FROM long_task.hand_back(w.id, 'worker lost', p_worker_id, NULL, NULL, p_group_id, p_term) h;
    END LOOP;
END
$$;
