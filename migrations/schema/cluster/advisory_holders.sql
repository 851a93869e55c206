-- Granted exclusive advisory locks (two-int form) of one namespace in this database: key → holder
-- pid. (Shared holds are the coordinator's watchers, waiting for a node's lock to come free: they
-- say nothing about the node's liveness.)
CREATE OR REPLACE FUNCTION long_task.advisory_holders(p_ns integer)
RETURNS TABLE (key bigint, pid integer)
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint, l.pid
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.mode = 'ExclusiveLock'
       AND l.classid = p_ns::oid
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;
