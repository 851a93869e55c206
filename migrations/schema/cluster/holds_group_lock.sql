-- Whether this session holds the coordinator lock of a group.
CREATE OR REPLACE FUNCTION long_task.holds_group_lock(p_group_id integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM long_task.advisory_holders(long_task.ns_group()) h
                    WHERE h.key = p_group_id::oid::bigint AND h.pid = pg_backend_pid())
$$;
