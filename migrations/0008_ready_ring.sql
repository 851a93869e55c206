-- pgtaskd schema, version 8: the ready ring. A claim used to find its tasks through a partial
-- index of long_task.task (state_id = 'AW'), whose entries of claimed tasks stay dead until
-- vacuum: under a steady stream the claim walked ever more of them, and while one transaction
-- held the vacuum horizon back it walked all of them (seconds per claim after minutes).
--
-- Claimable tasks now also have an entry in long_task.ready, a narrow table partitioned into
-- eight slots used as a ring: entries are inserted into the current insert slot, a claim deletes
-- the entries it takes, and a slot whose entries are gone is emptied by TRUNCATE — which needs no
-- vacuum and works while the horizon is held. A claim reads only the live slots, so the dead
-- entries it can meet are bounded by one rotation's worth, whatever the history.
-- long_task.task stays the table users read, insert into and update; the entries are kept by
-- its triggers (migrations/schema/ready/).

CREATE TABLE long_task.ready (
    slot        smallint    NOT NULL,
    group_id    integer     NOT NULL,
    priority    integer     NOT NULL,
    -- the task's last_state_change when it became claimable: FIFO order, and the test that the
    -- entry still speaks of the same wait (a task queued again gets a new entry)
    lsc         timestamptz NOT NULL,
    task_id     bigint      NOT NULL,
    topic       text,
    has_command boolean     NOT NULL,
    -- pinned to this node
    worker_id   bigint
) PARTITION BY LIST (slot);

-- Emptied by TRUNCATE, never vacuumed: a vacuum of a slot (throttled, and useless while the
-- horizon is held back) would hold the lock the rotation needs to empty it.
CREATE TABLE long_task.ready_0 PARTITION OF long_task.ready FOR VALUES IN (0)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_1 PARTITION OF long_task.ready FOR VALUES IN (1)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_2 PARTITION OF long_task.ready FOR VALUES IN (2)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_3 PARTITION OF long_task.ready FOR VALUES IN (3)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_4 PARTITION OF long_task.ready FOR VALUES IN (4)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_5 PARTITION OF long_task.ready FOR VALUES IN (5)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_6 PARTITION OF long_task.ready FOR VALUES IN (6)
    WITH (autovacuum_enabled = false, fillfactor = 100);
CREATE TABLE long_task.ready_7 PARTITION OF long_task.ready FOR VALUES IN (7)
    WITH (autovacuum_enabled = false, fillfactor = 100);

-- A node claims within its group; a SQL consumer usually across groups.
CREATE INDEX ready_group_order_idx ON long_task.ready (group_id, priority, lsc, task_id);
CREATE INDEX ready_order_idx ON long_task.ready (priority, lsc, task_id);

-- The ring's position, in sequences (non-transactional: moving them leaves no dead tuple):
--   ready_gen   the insert generation; the insert slot is ready_gen % 8
--   ready_head  the oldest live generation; the live slots are ready_head .. ready_gen
--   ready_rotated_at  when the ring was last rotated (milliseconds since the epoch)
CREATE SEQUENCE long_task.ready_gen MINVALUE 0 START 0;
CREATE SEQUENCE long_task.ready_head MINVALUE 0 START 0;
CREATE SEQUENCE long_task.ready_rotated_at MINVALUE 0 START 0;

-- The claim and the consumer API read the ring; their old indexes of waiting tasks go (a query
-- testing state_id = 'AW' would otherwise be steered to them and walk every dead entry).
DROP INDEX long_task.task_consume_idx;
DROP INDEX long_task.task_claim_idx;
-- A node's running tasks. Only a query naming a node uses it now (a query of every running
-- task, such as the lease expiry, was steered to it and walked the dead entries of every run).
DROP INDEX long_task.task_worker_idx;
CREATE INDEX task_worker_idx ON long_task.task (worker_id)
    WHERE state_id IN ('AE', 'AC') AND worker_id IS NOT NULL;

-- The lease expiry and its timer scan a window of lease deadlines (migrations/schema/scheduler/).
DROP FUNCTION long_task.expire_leases(integer, integer);

-- Tasks claimable now get their entry (the schema files' triggers keep them from here on).
INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command, worker_id)
SELECT 0, t.group_id, t.priority, t.last_state_change, t.id, t.topic, t.command IS NOT NULL,
       CASE WHEN t.pinned THEN t.worker_id END
  FROM long_task.task t
 WHERE t.state_id = 'AW' AND (t.run_after IS NULL OR t.run_after <= now())
   AND (t.depends_on IS NULL OR NOT EXISTS (
           SELECT 1 FROM long_task.task d WHERE d.id = ANY (t.depends_on) AND d.state_id <> 'CS'));
