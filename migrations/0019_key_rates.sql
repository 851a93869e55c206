-- pgtaskd schema, version 19: rate limits per key. A long_task.key_limit row may carry a rate
-- (rate_limit starts per rate_interval, a token bucket holding rate_limit) besides, or instead
-- of, its concurrency limit; the buckets of keys sit in long_task.rate_bucket next to the
-- group's (key '' is the group's own).
ALTER TABLE long_task.key_limit
    ALTER COLUMN max_running DROP NOT NULL,
    ADD COLUMN rate_limit integer CONSTRAINT key_limit_rate_limit CHECK (rate_limit >= 1),
    ADD COLUMN rate_interval interval NOT NULL DEFAULT interval '1 second'
        CONSTRAINT key_limit_rate_interval CHECK (rate_interval > interval '0'),
    ADD CONSTRAINT key_limit_limits_something CHECK (max_running IS NOT NULL OR rate_limit IS NOT NULL);
ALTER TABLE long_task.rate_bucket ADD COLUMN key text NOT NULL DEFAULT '';
ALTER TABLE long_task.rate_bucket DROP CONSTRAINT rate_bucket_pkey;
ALTER TABLE long_task.rate_bucket ADD PRIMARY KEY (group_id, key);
