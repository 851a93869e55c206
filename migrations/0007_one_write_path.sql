-- pgtaskd schema, version 7: one write path and one hand-back rule. From this version on the
-- numbered migrations hold only what cannot be re-run; functions, triggers and views live in
-- migrations/schema/ (applied after the numbered migrations).
--
--   * max_attempts loses its column default: the state machine trigger gives a task inserted
--     without one its group's default (group_settings.max_attempts, else 1), whoever inserted it
--     (a plain INSERT, long_task.submit, publish, publish_bulk), so every client has one default.
--   * requeue_lost (the coordinator's), recover_worker (a restarting or stopping node's) and
--     release_runs (a self-fenced node's) followed different rules for a run its node abandoned;
--     long_task.hand_back (migrations/schema/handback/hand_back.sql) replaces all three.

ALTER TABLE long_task.task ALTER COLUMN max_attempts DROP DEFAULT;

DROP FUNCTION long_task.requeue_lost(bigint[], uuid[], text);
DROP FUNCTION long_task.recover_worker(bigint, text);
DROP FUNCTION long_task.release_runs(bigint, bigint[], uuid[]);
