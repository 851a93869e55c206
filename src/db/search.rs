//! The console's task search: tasks filtered by state, group, topic, node, text in the command
//! or params and a creation-time range, newest first, one page at a time by keyset (`id <
//! before`, never OFFSET), so the hundredth page costs what the first does.
//!
//! Reads the primary key backwards and stops after one page of matches; a filter that matches
//! rarely reads further (see docs/console.md for the figures on a million rows). Rows come as JSON
//! objects without the output tails, the result or the full params (the detail has those).
//! Must never write.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::codes::TaskState;
use super::DbError;

/// The largest page.
pub const MAX_PAGE: i64 = 500;

/// What the search matches; every filter set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    pub states: Vec<TaskState>,
    pub group_id: Option<i32>,
    pub topic: Option<String>,
    /// The node that runs or last ran the task (or the one it is pinned to).
    pub worker_id: Option<i64>,
    /// Case-insensitive text in the command (its words joined by spaces) or the params' JSON.
    pub text: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// The keyset cursor: only tasks with a smaller id (the `next` of the previous page).
    pub before: Option<i64>,
    /// Page size, 1 to `MAX_PAGE`.
    pub limit: i64,
}

/// One page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPage {
    pub tasks: Vec<Value>,
    /// The cursor of the next page (`before=`), None on the last page.
    pub next: Option<i64>,
}

/// A LIKE pattern matching `text` anywhere, its wildcards escaped.
fn contains_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

const SEARCH_SQL: &str = "
SELECT jsonb_build_object(
           'id', t.id, 'state_id', t.state_id, 'group_id', t.group_id, 'worker_id', t.worker_id,
           'topic', t.topic, 'command', t.command, 'priority', t.priority, 'attempt', t.attempt,
           'max_attempts', t.max_attempts, 'created', t.created, 'started', t.started,
           'finished', t.finished, 'exit_code', t.exit_code, 'exit_signal', t.exit_signal,
           'error', left(t.error, 200), 'params', left(t.params::text, 200),
           'run_after', t.run_after, 'next_start', t.next_start, 'created_by', t.created_by)
  FROM long_task.task t
 WHERE ($1::bigint IS NULL OR t.id < $1)
   AND ($2::text[] IS NULL OR t.state_id = ANY ($2::text[]::char(2)[]))
   AND ($3::int IS NULL OR t.group_id = $3)
   AND ($4::text IS NULL OR t.topic = $4)
   AND ($5::bigint IS NULL OR t.worker_id = $5)
   AND ($6::text IS NULL OR array_to_string(t.command, ' ') ILIKE $6 OR t.params::text ILIKE $6)
   AND ($7::timestamptz IS NULL OR t.created >= $7)
   AND ($8::timestamptz IS NULL OR t.created < $8)
 ORDER BY t.id DESC
 LIMIT $9";

/// One page of tasks matching `query`, newest (highest id) first.
pub async fn search<C: GenericClient + Sync>(
    client: &C,
    query: &TaskQuery,
) -> Result<TaskPage, DbError> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let states: Option<Vec<&str>> =
        (!query.states.is_empty()).then(|| query.states.iter().map(|s| s.code()).collect());
    let pattern = query
        .text
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(contains_pattern);
    let rows = client
        .query(
            SEARCH_SQL,
            &[
                &query.before,
                &states,
                &query.group_id,
                &query.topic,
                &query.worker_id,
                &pattern,
                &query.created_from,
                &query.created_to,
                &(limit + 1),
            ],
        )
        .await
        .map_err(DbError::query("searching tasks"))?;
    let mut tasks: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
    let next = if tasks.len() as i64 > limit {
        tasks.truncate(limit as usize);
        tasks
            .last()
            .and_then(|t| t.get("id"))
            .and_then(Value::as_i64)
    } else {
        None
    };
    Ok(TaskPage { tasks, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_matched_literally() {
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(contains_pattern("sleep 60"), "%sleep 60%");
    }
}
