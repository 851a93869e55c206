-- pgbench script: one claim of 64 topic tasks, committed: run by three clients at once on a
-- backlog spread over several live slots of the ready ring (the state a node falls into when
-- claims fall behind for a moment: the head slot holds more than a rotation moves, the ring keeps
-- sealing new slots behind it). Found the soak's collapse (docs/queue.md, "Claims behind a
-- backlog"): a claimer whose entries a faster one had taken and committed between its read and
-- its locks read four times further ahead in each round, which only widened that gap, up to
-- 100,000 entries a slot; single claims ran for 10–15 s.
--
-- Set-up, on a scratch database migrated by `pgtaskd migrate` (pg_stat_statements as in
-- claim_outcome_loop.sql), six sealed slots of 15,000 entries each:
--   CREATE EXTENSION pg_stat_statements;
--   -- six times:
--   INSERT INTO long_task.task (group_id, state_id, topic)
--   SELECT 0, 'AW', 'soak' FROM generate_series(1, 15000);
--   SELECT pg_sleep(0.25); SELECT long_task.rotate_ready();
--   -- then: SELECT last_value FROM long_task.ready_gen;  (6: seven live slots)
-- Run (server time, no commit waits):
--   SELECT pg_stat_statements_reset();
--   PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 3 -T 10 -f benches/sql/backlog_claimers.sql DB
--   SELECT calls, total_exec_time / calls, max_exec_time, query FROM pg_stat_statements
--    WHERE query LIKE '%take_ready(%' ORDER BY total_exec_time DESC;
BEGIN;
SELECT count(*) FROM long_task.claim(1, 0, 64, '{soak}', false);
COMMIT;
