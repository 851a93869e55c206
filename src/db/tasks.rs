//! Task administration statements shared by the CLI verbs and the HTTP API: submit a task, read
//! one or many, cancel, re-queue. Rows are returned as JSON objects whose keys are the table's
//! column names (`to_jsonb`), so a column added by a later migration shows up without code here.
//!
//! Owns the validation of a new task's fields (each error names its key) before anything is
//! written. Must never change a task's state except through the state machine's legal moves.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::DbError;
use crate::db::codes::{Period, TaskState};

/// A new task: every key is a column of `long_task.task`. Unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// argv, run without a shell; an element `%TASK` becomes the task id. Required, non-empty.
    pub command: Vec<String>,
    pub params: Option<Value>,
    /// `AW` (the default: runs as soon as a node is free) or `DR` (a draft; a schedule fires it).
    pub state_id: Option<String>,
    pub priority: Option<i32>,
    pub group_id: Option<i32>,
    /// Pins the task to this node.
    pub worker_id: Option<i64>,
    pub cwd: Option<String>,
    /// When the schedule fires first.
    pub next_start: Option<chrono::DateTime<chrono::Utc>>,
    pub shed_period_id: Option<String>,
    pub shed_period_count: Option<i32>,
    pub shed_clone: Option<bool>,
    pub max_attempts: Option<i32>,
    /// Seconds.
    pub timeout: Option<f64>,
    /// First firing this many seconds from now (database clock), when `next_start` is unset. Not a
    /// column: set by the CLI's `--every` without `--at`.
    #[serde(skip)]
    pub next_start_in: Option<f64>,
}

/// A task's field was refused: `key` names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct FieldError {
    pub key: &'static str,
    pub message: String,
}

/// Errors of task administration.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The database refused the values (a check, a reference, a bad value).
    #[error("refused by the database: {0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn field(key: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        key,
        message: message.into(),
    }
}

impl NewTask {
    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.command.is_empty() {
            return Err(field("command", "must be a non-empty array of strings"));
        }
        if self.command[0].is_empty() {
            return Err(field("command", "the program (first element) is empty"));
        }
        if let Some(state) = &self.state_id {
            if !matches!(state.as_str(), "AW" | "DR") {
                return Err(field("state_id", "a new task starts in AW or DR"));
            }
        }
        if let Some(n) = self.max_attempts {
            if n < 1 {
                return Err(field("max_attempts", "must be at least 1"));
            }
        }
        if let Some(t) = self.timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(field("timeout", "must be a positive number of seconds"));
            }
        }
        if let Some(p) = &self.shed_period_id {
            if Period::from_code(p).is_none() {
                return Err(field(
                    "shed_period_id",
                    format!("unknown period `{p}` (known: {})", Period::known_codes()),
                ));
            }
            if self.shed_period_count.is_none() {
                return Err(field("shed_period_count", "required with shed_period_id"));
            }
        }
        if let Some(n) = self.shed_period_count {
            if n < 1 {
                return Err(field("shed_period_count", "must be at least 1"));
            }
            if self.shed_period_id.is_none() {
                return Err(field("shed_period_id", "required with shed_period_count"));
            }
        }
        if self.worker_id.is_some_and(|w| w < 1) {
            return Err(field("worker_id", "must be a positive worker id"));
        }
        Ok(())
    }
}

/// Turns a database refusal of the values into `Refused`; other errors stay database errors.
fn classify(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> TaskError {
    move |e| {
        let refused = e.code().is_some_and(|c| {
            let class = &c.code()[..2];
            class == "22" || class == "23" || *c == SqlState::RAISE_EXCEPTION
        });
        match (refused, e.as_db_error()) {
            (true, Some(db)) => TaskError::Refused(db.message().to_owned()),
            _ => TaskError::Db(DbError::Query { context, source: e }),
        }
    }
}

/// Inserts a task after validating it; returns its id.
pub async fn submit(client: &Client, task: &NewTask) -> Result<i64, TaskError> {
    task.validate()?;
    let row = client
        .query_one(
            "INSERT INTO long_task.task
                 (command, params, state_id, priority, group_id, worker_id, cwd, next_start,
                  shed_period_id, shed_period_count, shed_clone, max_attempts, timeout)
             VALUES ($1, $2, coalesce($3, 'AW'), coalesce($4, 0), coalesce($5, 0), $6, $7,
                     coalesce($8, now() + make_interval(secs => $9)),
                     $10, $11, coalesce($12, false), coalesce($13, 1), $14)
             RETURNING id",
            &[
                &task.command,
                &task.params,
                &task.state_id,
                &task.priority,
                &task.group_id,
                &task.worker_id,
                &task.cwd,
                &task.next_start,
                &task.next_start_in,
                &task.shed_period_id,
                &task.shed_period_count,
                &task.shed_clone,
                &task.max_attempts,
                &task.timeout,
            ],
        )
        .await
        .map_err(classify("submitting a task"))?;
    Ok(row.get(0))
}

/// One task as a JSON object (every column, plus `state_name`); None when there is no such task.
pub async fn get(client: &Client, id: i64) -> Result<Option<Value>, DbError> {
    let row = client
        .query_opt(
            "SELECT to_jsonb(t) || jsonb_build_object('state_name', s.name)
               FROM long_task.task t JOIN long_task.task_state s ON s.id = t.state_id
              WHERE t.id = $1",
            &[&id],
        )
        .await
        .map_err(DbError::query("reading a task"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Which tasks `list` returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub group_id: Option<i32>,
    pub limit: i64,
}

/// Tasks, newest first, without their output tails (use `get` for those).
pub async fn list(client: &Client, filter: &TaskFilter) -> Result<Vec<Value>, DbError> {
    let states: Option<Vec<&str>> =
        (!filter.states.is_empty()).then(|| filter.states.iter().map(|s| s.code()).collect());
    let rows = client
        .query(
            "SELECT to_jsonb(t) - 'stdout_tail' - 'stderr_tail'
               FROM long_task.task t
              WHERE ($1::text[] IS NULL OR t.state_id = ANY ($1::text[]::char(2)[]))
                AND ($2::int IS NULL OR t.group_id = $2)
              ORDER BY t.id DESC
              LIMIT $3",
            &[&states, &filter.group_id, &filter.limit.max(0)],
        )
        .await
        .map_err(DbError::query("listing tasks"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The result of a state change asked for by a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// No task has this id.
    NotFound,
    /// The task's state does not allow it; carries that state.
    Refused(String),
    /// Done (or nothing to do): the state before and after.
    Done { before: String, after: String },
}

async fn transition(
    client: &Client,
    id: i64,
    sql: &str,
    context: &'static str,
    already: &[&str],
) -> Result<Transition, DbError> {
    let row = client
        .query_opt(sql, &[&id])
        .await
        .map_err(DbError::query(context))?;
    let Some(row) = row else {
        return Ok(Transition::NotFound);
    };
    let before: String = row.get(0);
    let after: Option<String> = row.get(1);
    Ok(match after {
        Some(after) => Transition::Done { before, after },
        None if already.contains(&before.as_str()) => Transition::Done {
            after: before.clone(),
            before,
        },
        None => Transition::Refused(before),
    })
}

/// Cancels a task: a waiting or draft task ends `CC` at once, a running one becomes `AC` (its node
/// kills the process group and writes `CC`). A task already cancelling is left alone; a final
/// task is refused.
pub async fn cancel(client: &Client, id: i64) -> Result<Transition, DbError> {
    transition(
        client,
        id,
        "WITH target AS (SELECT id, state_id FROM long_task.task WHERE id = $1 FOR UPDATE),
              moved AS (
                UPDATE long_task.task t
                   SET state_id = CASE WHEN target.state_id = 'DR' THEN 'CC' ELSE 'AC' END,
                       error = CASE WHEN target.state_id = 'DR' THEN 'cancelled' ELSE t.error END
                  FROM target
                 WHERE t.id = target.id AND target.state_id IN ('DR', 'AW', 'AE')
             RETURNING t.state_id)
         SELECT target.state_id::text, (SELECT state_id::text FROM moved) FROM target",
        "cancelling a task",
        &["AC"],
    )
    .await
}

/// Queues a final or draft task again (a new attempt from a clean outcome). A waiting task is left
/// alone; a running one is refused (cancel it first).
pub async fn requeue(client: &Client, id: i64) -> Result<Transition, DbError> {
    transition(
        client,
        id,
        "WITH target AS (SELECT id, state_id FROM long_task.task WHERE id = $1 FOR UPDATE),
              moved AS (
                UPDATE long_task.task t SET state_id = 'AW'
                  FROM target
                 WHERE t.id = target.id AND target.state_id IN ('DR', 'CS', 'CF', 'CC')
             RETURNING t.state_id)
         SELECT target.state_id::text, (SELECT state_id::text FROM moved) FROM target",
        "re-queueing a task",
        &["AW"],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> NewTask {
        NewTask {
            command: vec!["true".into()],
            ..NewTask::default()
        }
    }

    #[test]
    fn validation_names_the_key() {
        assert!(task().validate().is_ok());
        let cases = [
            (
                NewTask {
                    command: vec![],
                    ..task()
                },
                "command",
            ),
            (
                NewTask {
                    state_id: Some("AE".into()),
                    ..task()
                },
                "state_id",
            ),
            (
                NewTask {
                    max_attempts: Some(0),
                    ..task()
                },
                "max_attempts",
            ),
            (
                NewTask {
                    timeout: Some(-1.0),
                    ..task()
                },
                "timeout",
            ),
            (
                NewTask {
                    shed_period_id: Some("YEAR".into()),
                    shed_period_count: Some(1),
                    ..task()
                },
                "shed_period_id",
            ),
        ];
        for (t, key) in cases {
            assert_eq!(t.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn unknown_json_keys_are_refused() {
        let err = serde_json::from_str::<NewTask>(r#"{"command":["true"],"colour":"red"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }
}
