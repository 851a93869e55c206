-- pgbench script: one node's claim of one process task, committed, then its outcome: the loop a
-- node runs per task when claims take one task at a time. Used to find where a claim's and an
-- outcome's server time goes (issue 13's limits cost, docs/queue.md "Limits: what they cost").
--
-- Set-up, on a scratch database migrated by `pgtaskd migrate` (a server with
-- shared_preload_libraries = 'pg_stat_statements' and pg_stat_statements.track = all,
-- pg_stat_statements.track_planning = on):
--   CREATE EXTENSION pg_stat_statements;
--   INSERT INTO long_task.task (group_id, state_id, command, concurrency_key)
--   SELECT 0, 'AW', '{/bin/true}', 'k' || (i % 100) FROM generate_series(1, 100000) i;
--   VACUUM ANALYZE;
-- and, for the limited path, the limits of benches/limits.rs:
--   INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, 10000, 1000);
--   INSERT INTO long_task.key_limit (group_id, key_pattern, max_running) VALUES (0, 'k1', 500), (0, 'k9%', 200);
-- Run (server time, no commit waits):
--   SELECT pg_stat_statements_reset();
--   PGOPTIONS='-c synchronous_commit=off' pgbench -n -f benches/sql/claim_outcome_loop.sql -t 3000 DB
--   SELECT calls, plans, total_exec_time / calls, total_plan_time / greatest(plans, 1), query
--     FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
--    ORDER BY total_exec_time DESC;
-- (pg_stat_statements times a statement's run, not its executor start-up.)
BEGIN;
SELECT array_agg(id) AS ids, array_agg(run_id) AS rids, count(*) AS n FROM long_task.claim(1, 0, 1, '{}', true) \gset
COMMIT;
SELECT count(*) FROM long_task.complete_runs(':ids', ':rids', array_fill('CS'::text, ARRAY[:n]), NULL, NULL, NULL, NULL, NULL, NULL, NULL);
