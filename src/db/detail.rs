//! One task as the console shows it, in one statement: every column of the row (output tails
//! included, as the row holds them now), its attempt history (`long_task.task_run`), its events
//! (`long_task.event`), the tasks it depends on and the ones that depend on it.
//!
//! Each list is bounded (the newest `HISTORY_LIMIT` runs and events, `DEPENDENTS_LIMIT`
//! dependents) and read by an index: runs by `task_run_task_idx`, events by `event_task_idx`,
//! dependencies by primary key, dependents by `task_dependents_idx` (migration 13). Must never
//! write.

use serde_json::Value;
use tokio_postgres::GenericClient;

use super::DbError;

/// Newest runs and events shown.
pub const HISTORY_LIMIT: i64 = 100;
/// Dependents shown.
pub const DEPENDENTS_LIMIT: i64 = 100;

const DETAIL_SQL: &str = "
WITH t AS (
    SELECT t.*, s.name AS state_name
      FROM long_task.task t JOIN long_task.task_state s ON s.id = t.state_id
     WHERE t.id = $1
)
SELECT jsonb_build_object(
    'now', now(),
    'task', to_jsonb(t),
    'runs', coalesce((
        SELECT jsonb_agg(to_jsonb(r) ORDER BY r.id)
          FROM (SELECT r.*, extract(epoch FROM r.finished - r.started)::float8 AS seconds
                  FROM long_task.task_run r WHERE r.task_id = $1
                 ORDER BY r.attempt DESC, r.id DESC LIMIT $2) r), '[]'::jsonb),
    'events', coalesce((
        SELECT jsonb_agg(to_jsonb(e) ORDER BY e.id)
          FROM (SELECT e.* FROM long_task.event e WHERE e.task_id = $1
                 ORDER BY e.id DESC LIMIT $2) e), '[]'::jsonb),
    'depends_on', coalesce((
        SELECT jsonb_agg(jsonb_build_object('id', d.id, 'state_id', d.state_id,
                                            'command', d.command, 'topic', d.topic) ORDER BY d.id)
          FROM long_task.task d WHERE d.id = ANY (t.depends_on)), '[]'::jsonb),
    'dependents', coalesce((
        SELECT jsonb_agg(to_jsonb(d) ORDER BY d.id)
          FROM (SELECT d.id, d.state_id, d.command, d.topic FROM long_task.task d
                 WHERE d.depends_on @> ARRAY[$1::bigint] AND d.depends_on IS NOT NULL
                 ORDER BY d.id LIMIT $3) d), '[]'::jsonb)
)
  FROM t";

/// The task `id` with its history, events and dependencies; None when there is no such task.
pub async fn task_detail<C: GenericClient + Sync>(
    client: &C,
    id: i64,
) -> Result<Option<Value>, DbError> {
    let row = client
        .query_opt(DETAIL_SQL, &[&id, &HISTORY_LIMIT, &DEPENDENTS_LIMIT])
        .await
        .map_err(DbError::query("reading a task's detail"))?;
    Ok(row.map(|r| r.get(0)))
}
