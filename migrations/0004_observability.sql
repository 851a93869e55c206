-- pgtaskd schema, version 4: what a node reports about its host with each heartbeat, so that
-- `pgtaskd status`, `GET /cluster` and the status page show load and memory, and why a node
-- stopped claiming (free memory under its configured floor).

ALTER TABLE long_task.worker
    -- one-minute load average of the node's host
    ADD COLUMN load1 double precision,
    -- bytes of memory available for new processes on the node's host, and its total
    ADD COLUMN free_memory bigint,
    ADD COLUMN total_memory bigint,
    -- the node's memory floor (bytes; 0 = none) and whether it is under it (claims nothing then)
    ADD COLUMN min_free_memory bigint NOT NULL DEFAULT 0,
    ADD COLUMN low_memory boolean NOT NULL DEFAULT false;

-- The most recently finished tasks (status page, `pgtaskd status`) without a scan of the history.
CREATE INDEX task_recent_finished_idx ON long_task.task (finished DESC) WHERE finished IS NOT NULL;
