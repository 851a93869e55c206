-- pgtaskd schema, version 13: what the web console needs that the tables did not hold.
--
-- Queue depth over time: no table remembers how many tasks waited a minute ago, so each group's
-- coordinator writes one sample per minute (long_task.sample_queue, under its term) and deletes
-- samples older than a day; the console's chart reads the last hour by primary key. At most
-- 1,440 rows per group.
CREATE TABLE long_task.queue_sample (
    group_id     integer     NOT NULL,
    -- the minute sampled (date_trunc('minute', now()) of the database)
    at           timestamptz NOT NULL,
    waiting      integer     NOT NULL,
    running      integer     NOT NULL,
    -- seconds the oldest waiting task had waited
    oldest_wait  double precision,
    PRIMARY KEY (group_id, at)
);
COMMENT ON TABLE long_task.queue_sample IS
    'queue depth per group and minute, written by the group''s coordinator, kept one day';

-- A task's dependents whatever their state (the console's task page; task_depends_on_idx holds
-- only waiting and draft ones, for the cascade). Measured on 1,000,000 tasks (docs/console.md):
-- the task page's query took 230-250 ms without it (a scan of the table for `depends_on @>`),
-- 0.4-0.8 ms with it. Only tasks with dependencies have entries.
CREATE INDEX task_dependents_idx ON long_task.task USING gin (depends_on)
    WHERE depends_on IS NOT NULL;
