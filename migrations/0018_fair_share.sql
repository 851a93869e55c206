-- pgtaskd schema, version 18: fair share across concurrency keys (docs/queue.md, "Fair share").
-- A group with fair_share takes its claims round-robin across the concurrency keys of its best
-- waiting priority, the least recently served key first, so one key with a large backlog
-- cannot starve a key with a few tasks (long_task.take_fair).
ALTER TABLE long_task.group_settings ADD COLUMN fair_share boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN long_task.group_settings.fair_share IS
    'claims take tasks round-robin across concurrency keys within the best waiting priority';

-- The keys of a fair-share group that have (or recently had) waiting entries, and when each
-- was last served (long_task.fair_served; 0: never, so a new key comes first). A row is added
-- when a task with a new key is queued, moved on each serving, and dropped once the key has no
-- entry left. Small (one row per waiting key) and updated once per key per claim.
CREATE TABLE long_task.fair_key (
    group_id integer NOT NULL,
    key      text    NOT NULL,
    served   bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, key)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE INDEX fair_key_served_idx ON long_task.fair_key (group_id, served, key);
CREATE SEQUENCE long_task.fair_served;

-- A key's head on the ring (only entries with a key pay for it).
CREATE INDEX ready_key_order_idx ON long_task.ready (group_id, concurrency_key, priority, lsc, task_id)
    WHERE concurrency_key IS NOT NULL;
