-- pgtaskd schema, version 17: concurrency and rate limits (docs/queue.md, "Limits").
--   group_settings.max_running   at most this many tasks of the group run at once (AE or AC),
--                                across every node and SQL consumer
--   group_settings.key_limit     at most this many tasks with the same concurrency_key run at
--                                once, for keys without an override in long_task.key_limit
--   group_settings.rate_limit    at most this many starts per rate_interval (a token bucket of
--                                rate_limit tokens, refilled continuously by the database clock)
--   long_task.key_limit          overrides of the per-key limit, for one key or a LIKE pattern
-- A claim of a group with any limit is serialized by a transaction advisory lock of the group
-- (long_task.ns_limit) and counts the group's running tasks under it: no overshoot however many
-- nodes claim at once. Groups without limits pay nothing.
ALTER TABLE long_task.task ADD COLUMN concurrency_key text;
COMMENT ON COLUMN long_task.task.concurrency_key IS
    'tasks with the same key share the per-key concurrency limit of their group (NULL: none)';
-- the ring carries the key, so a claim can pass over entries of keys at their limit without
-- taking them
ALTER TABLE long_task.ready ADD COLUMN concurrency_key text;

ALTER TABLE long_task.group_settings
    ADD COLUMN max_running integer CONSTRAINT group_max_running CHECK (max_running >= 1),
    ADD COLUMN key_limit integer CONSTRAINT group_key_limit CHECK (key_limit >= 1),
    ADD COLUMN rate_limit integer CONSTRAINT group_rate_limit CHECK (rate_limit >= 1),
    ADD COLUMN rate_interval interval NOT NULL DEFAULT interval '1 second'
        CONSTRAINT group_rate_interval CHECK (rate_interval > interval '0');
COMMENT ON COLUMN long_task.group_settings.max_running IS
    'at most this many tasks of the group run at once across the cluster (NULL: no limit)';
COMMENT ON COLUMN long_task.group_settings.key_limit IS
    'at most this many tasks per concurrency_key run at once, unless long_task.key_limit says otherwise (NULL: no limit)';
COMMENT ON COLUMN long_task.group_settings.rate_limit IS
    'at most this many task starts per rate_interval (token bucket; NULL: no limit)';

CREATE TABLE long_task.key_limit (
    group_id    integer NOT NULL,
    -- a key, or a LIKE pattern of keys; an exact key wins over patterns, then the longest pattern
    key_pattern text    NOT NULL,
    max_running integer NOT NULL CONSTRAINT key_limit_max_running CHECK (max_running >= 1),
    PRIMARY KEY (group_id, key_pattern)
);
COMMENT ON TABLE long_task.key_limit IS
    'per-key concurrency limits of a group, for one key or a LIKE pattern of keys';

-- The token bucket of a rate-limited group: tokens left at refilled_at. Written by claims under
-- the group's limit lock; starved: a claim found it empty while tasks waited (the coordinator's
-- scheduler tick wakes the group when the next token is due).
CREATE TABLE long_task.rate_bucket (
    group_id    integer PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz      NOT NULL,
    starved     boolean          NOT NULL DEFAULT false
);

-- What a limited claim counts: the running tasks of a group, by key. `attempt > 0` (true of
-- every running task) is in the predicate so that only a query stating it can use the index: a
-- query of every running task (the lease expiry, the running view) would otherwise be steered
-- to it and walk the dead entries of every run (see task_worker_idx, migration 8).
CREATE INDEX task_running_key_idx ON long_task.task (group_id, concurrency_key)
    WHERE state_id IN ('AE', 'AC') AND attempt > 0;

-- take_ready gains the keys to pass over
DROP FUNCTION IF EXISTS long_task.take_ready(integer, integer, bigint, text[], boolean, text);
