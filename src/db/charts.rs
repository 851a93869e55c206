//! The console's charts over a recent window (at most `MAX_MINUTES`): runs started and tasks
//! finished per minute by group and state, dispatch-latency percentiles per minute, and queue
//! depth per minute from the coordinators' samples (`long_task.queue_sample`); and the sample
//! itself (`long_task.sample_queue`), which each coordinator writes once a minute.
//!
//! Every read is bounded by the window and an index, never a scan of the history: attempts by
//! `task_run_finished_idx (group_id, finished)` (one range per group, the groups found by a
//! loose index scan of the same index), tasks cancelled before they ran by
//! `task_recent_finished_idx`, running tasks by `task_worker_idx`, samples by their primary key.
//!
//! Dispatch latency is the wait of each attempt started in the window: from the latest of the
//! task's creation and its previous attempt's end (or retry time) to its start. A task re-queued
//! or delayed (`run_after`) by hand counts from that earlier point, so its wait shows longer than
//! it was (the node's own `pgtaskd_dispatch_latency_seconds` histogram is exact). Must never
//! write, except `sample_queue`.

use serde_json::Value;
use tokio_postgres::{Client, GenericClient};

use super::DbError;

/// The widest window a chart may ask for.
pub const MAX_MINUTES: i32 = 180;

/// The window's first minute. Written out in each condition (not read from a CTE) so that the
/// planner sees a bound it can estimate and picks the index ranges.
macro_rules! since {
    () => {
        "date_trunc('minute', now()) - make_interval(mins => $1 - 1)"
    };
}

const CHARTS_SQL: &str = concat!(
    "
WITH RECURSIVE groups AS (
    -- the distinct groups of task_run, one index descent each
    (SELECT r.group_id FROM long_task.task_run r ORDER BY r.group_id LIMIT 1)
    UNION ALL
    SELECT (SELECT r.group_id FROM long_task.task_run r WHERE r.group_id > g.group_id
             ORDER BY r.group_id LIMIT 1)
      FROM groups g WHERE g.group_id IS NOT NULL
), runs AS MATERIALIZED (
    SELECT r.id, r.task_id, r.group_id, r.state_id, r.retry_at, r.started, r.finished
      FROM groups g
     CROSS JOIN LATERAL (
            -- OFFSET 0: one index range per group, not a join over the whole table
            SELECT r.* FROM long_task.task_run r
             WHERE r.group_id = g.group_id AND r.finished >= ", since!(), " OFFSET 0) r
     WHERE g.group_id IS NOT NULL
), cancelled_unrun AS (
    -- cancelled while waiting: that end wrote no task_run row (an attempt's end writes one
    -- with the task's own finished time)
    SELECT t.group_id, t.finished
      FROM long_task.task t
     WHERE t.finished IS NOT NULL AND t.finished >= ", since!(), " AND t.state_id = 'CC'
       AND NOT EXISTS (SELECT 1 FROM long_task.task_run r
                        WHERE r.task_id = t.id AND r.finished = t.finished)
), started AS MATERIALIZED (
    -- every attempt started in the window (ended or still running) and how long it had waited
    SELECT s.group_id, s.started,
           extract(epoch FROM s.started - greatest(t.created, p.finished, p.retry_at))::float8 AS wait
      FROM (SELECT r.id, r.task_id, r.group_id, r.started FROM runs r
             WHERE r.started >= ", since!(), "
            UNION ALL
            SELECT NULL, x.id, x.group_id, x.started FROM long_task.task x
             WHERE x.state_id IN ('AE', 'AC') AND x.worker_id IS NOT NULL
               AND x.started >= ", since!(), ") s
      LEFT JOIN LATERAL (
            SELECT t.created FROM long_task.task t WHERE t.id = s.task_id LIMIT 1) t ON true
      LEFT JOIN LATERAL (
            SELECT p.finished, p.retry_at FROM long_task.task_run p
             WHERE p.task_id = s.task_id AND (s.id IS NULL OR p.id < s.id)
             ORDER BY p.id DESC LIMIT 1) p ON true
)
SELECT jsonb_build_object(
    'now', now(),
    'since', ", since!(), ",
    'minutes', $1,
    'started', coalesce((
        SELECT jsonb_agg(jsonb_build_object('minute', m, 'group_id', g, 'n', n) ORDER BY m, g)
          FROM (SELECT date_trunc('minute', s.started) AS m, s.group_id AS g, count(*) AS n
                  FROM started s GROUP BY 1, 2) x), '[]'::jsonb),
    'finished', coalesce((
        SELECT jsonb_agg(jsonb_build_object('minute', m, 'group_id', g, 'state', st, 'n', n)
                         ORDER BY m, g, st)
          FROM (SELECT date_trunc('minute', f.finished) AS m, f.group_id AS g, f.st, count(*) AS n
                  FROM (SELECT r.group_id, r.finished,
                               CASE WHEN r.retry_at IS NOT NULL THEN 'retry' ELSE r.state_id::text END AS st
                          FROM runs r
                        UNION ALL
                        SELECT c.group_id, c.finished, 'CC' FROM cancelled_unrun c) f
                 GROUP BY 1, 2, 3) x), '[]'::jsonb),
    'latency', coalesce((
        SELECT jsonb_agg(jsonb_build_object('minute', m, 'n', n, 'p50', q[1], 'p90', q[2], 'p99', q[3])
                         ORDER BY m)
          FROM (SELECT date_trunc('minute', s.started) AS m, count(*) AS n,
                       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY greatest(s.wait, 0)) AS q
                  FROM started s WHERE s.wait IS NOT NULL GROUP BY 1) x), '[]'::jsonb),
    'queue', coalesce((
        SELECT jsonb_agg(jsonb_build_object('minute', q.at, 'group_id', q.group_id,
                                            'waiting', q.waiting, 'running', q.running,
                                            'oldest_wait', q.oldest_wait) ORDER BY q.at, q.group_id)
          FROM long_task.queue_sample q WHERE q.at >= ", since!(), "), '[]'::jsonb)
)"
);

/// The charts' series over the last `minutes` (clamped to 1..=`MAX_MINUTES`). Runs in a
/// read-only transaction with JIT off: the statement's cost estimate (one index range per group
/// of an unknown number of groups) crosses the JIT threshold, and compiling it took a second on a
/// million rows where running it takes 15-50 ms.
pub async fn charts(client: &mut Client, minutes: i32) -> Result<Value, DbError> {
    let minutes = minutes.clamp(1, MAX_MINUTES);
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(DbError::query("reading the charts"))?;
    tx.batch_execute("SET LOCAL jit = off")
        .await
        .map_err(DbError::query("reading the charts"))?;
    let row = tx
        .query_one(CHARTS_SQL, &[&minutes])
        .await
        .map_err(DbError::query("reading the charts"))?;
    tx.commit()
        .await
        .map_err(DbError::query("reading the charts"))?;
    Ok(row.get(0))
}

/// Writes this minute's queue-depth sample of `group_id` if `term` is still the group's term;
/// returns whether it wrote (false: deposed).
pub async fn sample_queue<C: GenericClient + Sync>(
    client: &C,
    group_id: i32,
    term: i64,
) -> Result<bool, DbError> {
    let row = client
        .query_one("SELECT long_task.sample_queue($1, $2)", &[&group_id, &term])
        .await
        .map_err(DbError::query("sampling the queue"))?;
    Ok(row.get(0))
}
