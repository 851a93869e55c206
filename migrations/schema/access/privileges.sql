-- Who may do what in the database (docs/security.md): the four NOLOGIN group roles a DBA grants
-- to login roles, every privilege they carry, row-level security by group, and which functions
-- run as their owner. Applied last, with the other schema files, after any function is created
-- again (CREATE OR REPLACE resets SECURITY DEFINER and SET).
--
--   pgtaskd_reader     the tables and views, read-only (dashboards, `pgtaskd status`)
--   pgtaskd_submitter  + queue, cancel, re-queue and schedule tasks (the reference INSERT/UPDATE
--                      on the columns a person sets), the SQL consumer API
--   pgtaskd_operator   + the control plane: long_task.worker's stop and max_task_count,
--                      long_task.group_settings (allow-lists, run_as, limits, retention),
--                      pausing a group, handing a node's tasks over (hand_over_node)
--   pgtaskd_node       + what a node does: register and heartbeat in long_task.worker, claim,
--                      outcomes, hand-back, election, the coordinator's and scheduler's rounds
--                      (functions only: no direct write of long_task.task); it includes
--                      pgtaskd_submitter because a node's HTTP API queues, cancels and re-queues
--
-- Roles are created only when the migrating role may (superuser or CREATEROLE); otherwise a
-- WARNING names the missing privilege and the SQL to run, the grants to missing roles are
-- skipped, and `pgtaskd migrate` says so (it applies this file again once the roles exist).
-- Row-level security on task, task_run, event and queue_sample limits a role to the groups
-- long_task.group_access gives it; with no row for a role, every group (opt-in).

-- Nothing for PUBLIC: not the schema, not a table, not a function (PostgreSQL grants EXECUTE on
-- new functions to PUBLIC by default; the default is revoked for this schema too).
REVOKE ALL ON SCHEMA long_task FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA long_task FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA long_task FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA long_task FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA long_task REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- The functions that act on rows their caller may not write directly run as their owner, with
-- a search_path no caller can change: the node's, the consumer API's that draw ids or take over
-- runs, and the statement trigger (dependency cascade, ready ring, notifications). The row
-- triggers run as the caller (no SET on the hot per-row path): what they read is granted below.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'long_task'::regnamespace
           AND p.proname IN ('claim', 'running_state', 'complete_runs', 'finish_runs', 'hand_back',
                             'become_coordinator', 'depose_stale_coordinator', 'coordinate',
                             'scheduler_tick', 'scheduler_tick_as', 'expire_leases', 'fire_schedules',
                             'purge_finished', 'promote_due', 'turn_ready', 'rotate_ready',
                             'terminate_node_sessions', 'publish_bulk', 'consume_topic', 'consume',
                             'ack', 'ack_many', 'nack', 'task_after_write', 'record_change',
                             'sample_queue', 'record_output', 'hand_over_node', 'due_crons', 'fire_crons')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$$;

-- Row-level security by group (long_task.accessible_groups; the sub-selects are evaluated once
-- per statement). The owner, superusers and BYPASSRLS roles are not subject to it.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['task', 'task_run', 'event', 'queue_sample'] LOOP
        IF NOT (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = ('long_task.' || t)::regclass) THEN
            EXECUTE format('ALTER TABLE long_task.%I ENABLE ROW LEVEL SECURITY', t);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policies p
                        WHERE p.schemaname = 'long_task' AND p.tablename = t AND p.policyname = 'group_access') THEN
            EXECUTE format($p$CREATE POLICY group_access ON long_task.%I
                USING ((SELECT long_task.accessible_groups(current_user)) IS NULL
                       OR group_id = ANY ((SELECT long_task.accessible_groups(current_user))::integer[]))$p$, t);
        END IF;
    END LOOP;
END
$$;
-- The views read with their reader's privileges, so row-level security applies through them.
ALTER VIEW long_task.running SET (security_invoker = true);
ALTER VIEW long_task.expired SET (security_invoker = true);
ALTER VIEW long_task.queue_stats SET (security_invoker = true);
ALTER VIEW long_task.limits SET (security_invoker = true);

-- The roles, then what each may do.
DO $$
DECLARE
    r text;
    may_create boolean;
    missing text[] := '{}';
BEGIN
    SELECT a.rolsuper OR a.rolcreaterole INTO may_create FROM pg_roles a WHERE a.rolname = current_user;
    FOREACH r IN ARRAY ARRAY['pgtaskd_reader', 'pgtaskd_submitter', 'pgtaskd_operator', 'pgtaskd_node'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = r) THEN
            IF may_create THEN
                BEGIN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL; -- created meanwhile by the migration of another database of this server
                END;
            ELSE
                missing := missing || r;
            END IF;
        END IF;
    END LOOP;
    IF cardinality(missing) > 0 THEN
        RAISE WARNING 'pgtaskd roles % do not exist and role "%" may not create them (it needs CREATEROLE); grants to them are skipped',
            array_to_string(missing, ', '), current_user
            USING HINT = 'as a superuser run the statements `pgtaskd migrate` prints (each role IN ROLE the one it includes), then `pgtaskd migrate` again';
        RETURN;
    END IF;
    -- memberships: each role includes the one above it
    BEGIN
        GRANT pgtaskd_reader TO pgtaskd_submitter;
        GRANT pgtaskd_submitter TO pgtaskd_operator;
        GRANT pgtaskd_submitter TO pgtaskd_node;
    EXCEPTION WHEN unique_violation THEN
        NULL; -- granted meanwhile by the migration of another database of this server
    WHEN insufficient_privilege THEN
        RAISE WARNING 'role "%" may not grant the pgtaskd roles to each other', current_user
            USING HINT = 'as a superuser run: GRANT pgtaskd_reader TO pgtaskd_submitter; GRANT pgtaskd_submitter TO pgtaskd_operator; GRANT pgtaskd_submitter TO pgtaskd_node';
    END;

    -- the vacuum-horizon warnings of `status` and the status page read other sessions' xmin
    BEGIN
        GRANT pg_read_all_stats TO pgtaskd_reader;
    EXCEPTION WHEN insufficient_privilege OR unique_violation THEN
        RAISE WARNING 'role "%" may not grant pg_read_all_stats to pgtaskd_reader: horizon warnings will not see other roles'' sessions', current_user
            USING HINT = 'as a superuser run: GRANT pg_read_all_stats TO pgtaskd_reader';
    END;

    EXECUTE $grants$
    GRANT USAGE ON SCHEMA long_task TO pgtaskd_reader, pgtaskd_submitter, pgtaskd_operator, pgtaskd_node;

    -- pgtaskd_reader: everything a dashboard shows
    GRANT SELECT ON long_task.task, long_task.task_run, long_task.event, long_task.worker,
                    long_task.coordinator, long_task.group_settings, long_task.group_access,
                    long_task.task_state, long_task.period, long_task.installation,
                    long_task.schema_migrations, long_task.schema_files, long_task.queue_sample,
                    long_task.running, long_task.expired, long_task.queue_stats,
                    long_task.key_limit, long_task.rate_bucket, long_task.limits, long_task.fair_key,
                    -- the ready ring's entries (the limits view counts the waiting ones)
                    long_task.ready
       TO pgtaskd_reader;
    GRANT EXECUTE ON FUNCTION long_task.accessible_groups, long_task.channel, long_task.key_limits, long_task.key_limit_of,
                              long_task.legal_next_states, long_task.default_max_attempts,
                              long_task.lease_seconds
       TO pgtaskd_reader;

    -- pgtaskd_submitter: the columns a person sets (the trigger decides the rest), and the API
    GRANT INSERT (params, state_id, priority, group_id, worker_id, command, cwd, next_start,
                  shed_period_id, shed_period_count, shed_clone, shed_cron, shed_timezone, max_attempts, timeout, run_after,
                  topic, depends_on, dedup_key, retry_base, retry_max, retry_jitter,
                  max_lost_reruns, env, limit_memory, limit_cpu_seconds, limit_open_files,
                  limit_processes, concurrency_key)
       ON long_task.task TO pgtaskd_submitter;
    GRANT UPDATE (params, state_id, priority, group_id, worker_id, command, cwd, next_start,
                  shed_period_id, shed_period_count, shed_clone, shed_cron, shed_timezone, max_attempts, timeout, run_after,
                  topic, retry_base, retry_max, retry_jitter, max_lost_reruns, env, limit_memory,
                  limit_cpu_seconds, limit_open_files, limit_processes, concurrency_key)
       ON long_task.task TO pgtaskd_submitter;
    GRANT EXECUTE ON FUNCTION long_task.submit, long_task.cancel, long_task.requeue,
                              long_task.publish, long_task.publish_bulk,
                              long_task.consume, long_task.consume_topic,
                              long_task.ack, long_task.ack_many,
                              long_task.nack,
                              -- what the row triggers call as the writing role
                              long_task.task_before_write, long_task.task_reset_lost,
                              long_task.task_deps_before_insert, long_task.task_after_write,
                              long_task.reject_task_state, long_task.check_period,
                              long_task.check_cron,
                              long_task.check_program, long_task.program_refusal,
                              long_task.program_matches, long_task.check_env,
                              long_task.check_group_access,
                              -- the event of a person's cancel or re-queue (long_task.cancel, requeue)
                              long_task.record_change
       TO pgtaskd_submitter;

    -- pgtaskd_operator: the control plane
    GRANT UPDATE (stop, max_task_count) ON long_task.worker TO pgtaskd_operator;
    GRANT INSERT, UPDATE, DELETE ON long_task.group_settings, long_task.key_limit TO pgtaskd_operator;
    GRANT EXECUTE ON FUNCTION long_task.worker_notify, long_task.group_settings_notify,
                              long_task.key_limit_notify, long_task.ns_pause,
                              -- a change of a group's limits waits for its claims
                              long_task.limit_change_lock, long_task.lock_limit_group,
                              long_task.ns_limit, long_task.ns_limit_slot, long_task.limit_slots,
                              long_task.pause_group, long_task.resume_group,
                              -- SECURITY DEFINER: it re-queues runs through hand_back, which
                              -- the operator may not call itself
                              long_task.hand_over_node
       TO pgtaskd_operator;

    -- pgtaskd_node: its own worker row, and the node's functions
    GRANT INSERT, UPDATE ON long_task.worker TO pgtaskd_node;
    GRANT USAGE ON SEQUENCE long_task.worker_id_seq TO pgtaskd_node;
    GRANT EXECUTE ON FUNCTION long_task.worker_notify, long_task.ns_node, long_task.ns_group,
                              long_task.ns_ring, long_task.ns_claim, long_task.ns_hand_over,
                              long_task.advisory_holders,
                              long_task.holds_group_lock,
                              long_task.claim(bigint, integer, integer),
                              long_task.claim(bigint, integer, integer, text[], boolean),
                              long_task.running_state, long_task.complete_runs, long_task.finish_runs,
                              long_task.hand_back, long_task.become_coordinator, long_task.depose_stale_coordinator,
                              long_task.coordinate, long_task.scheduler_tick, long_task.scheduler_tick_as,
                              long_task.expire_leases, long_task.fire_schedules, long_task.purge_finished,
                              long_task.due_crons, long_task.fire_crons,
                              long_task.promote_due, long_task.turn_ready, long_task.rotate_ready,
                              long_task.sample_queue, long_task.record_output,
                              -- its HTTP API's POST /nodes/{id}/hand-over (the write scope); no
                              -- more than it may do already (worker.stop, hand_back)
                              long_task.hand_over_node
       TO pgtaskd_node;
    $grants$;
END
$$;
