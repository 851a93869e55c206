-- Called by a node waiting for the group lock when its wait timed out: when the lock's holder is
-- a node whose heartbeat is older than p_timeout (hung, stopped, partitioned), end its sessions
-- so the lock is freed. Returns the worker id deposed, or NULL.
CREATE OR REPLACE FUNCTION long_task.depose_stale_coordinator(p_group_id integer, p_by_worker_id bigint,
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
