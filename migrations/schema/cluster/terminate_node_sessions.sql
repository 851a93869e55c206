-- Ends every session of a node in this database (named `pgtaskd w<id> …`, or holding its
-- liveness lock). Signals without waiting (a wait of up to 1 s per session would stall the
-- coordinator's round); the run_id guard covers a write that is still in flight. Returns how
-- many sessions were signalled.
CREATE OR REPLACE FUNCTION long_task.terminate_node_sessions(p_worker_id bigint)
RETURNS integer
LANGUAGE sql AS $$
    SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid))::integer
      FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
       AND (a.application_name LIKE 'pgtaskd w' || p_worker_id || ' %'
            OR a.pid IN (SELECT h.pid FROM long_task.advisory_holders(long_task.ns_node()) h
                          WHERE h.key = p_worker_id))
$$;
