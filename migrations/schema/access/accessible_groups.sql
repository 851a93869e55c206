-- The groups a role may use under long_task.group_access (migration 11), or NULL when it may use
-- every group: no row names the role or a role it is a member of (isolation is opt-in), or the
-- role is a superuser, has BYPASSRLS or owns long_task.task. Read by the row-level security
-- policies (with current_user) and by the SQL functions that bypass them (with session_user,
-- the login role: inside a SECURITY DEFINER function current_user is the owner).
CREATE OR REPLACE FUNCTION long_task.accessible_groups(p_role name) RETURNS integer[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    groups integer[];
BEGIN
    -- the common case: no restriction configured at all (one probe of a tiny table)
    IF NOT EXISTS (SELECT 1 FROM long_task.group_access) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                WHERE r.rolname = p_role AND (r.rolsuper OR r.rolbypassrls))
       OR pg_catalog.pg_has_role(p_role,
                                 (SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid = 'long_task.task'::regclass), 'MEMBER') THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(DISTINCT a.group_id ORDER BY a.group_id) INTO groups
      FROM long_task.group_access a
     WHERE pg_catalog.pg_has_role(p_role, a.grantee, 'MEMBER');
    RETURN groups;
END
$$;
