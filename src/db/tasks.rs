//! The one write path of every client — the CLI verbs, the HTTP API and the Rust client — and
//! their reads: submit a task (`long_task.submit`), cancel it (`long_task.cancel`), queue it again
//! (`long_task.requeue`), read one or many. The defaults and the state rules live in those SQL
//! functions, the same ones a SQL user calls; this module validates a new task's fields (each
//! error names its key) before anything is written, and calls them. Rows read for people are
//! JSON objects keyed by the table's column names (`to_jsonb`), so a column added by a later
//! migration shows up without code here.
//!
//! Works on any `GenericClient` (a pooled connection or the caller's transaction); must never
//! open a transaction of its own, and never change a task's state except through those functions.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use super::codes::{Period, TaskState};
use super::DbError;

/// A new task. The serialized keys are columns of `long_task.task` (the HTTP API's body);
/// unknown keys are refused. Build one with [`NewTask::command`] (an OS process) or
/// [`NewTask::topic`] (an in-process handler or SQL consumer task) and the setters; every field
/// left `None` takes the default of `long_task.submit` (docs/interfaces.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// argv, run without a shell; an element `%TASK` becomes the task id.
    pub command: Option<Vec<String>>,
    /// The handler or consumer topic (a task with a topic and no command runs in-process).
    pub topic: Option<String>,
    pub params: Option<Value>,
    /// `AW` (the default: runs as soon as a node is free) or `DR` (a draft; a schedule fires it).
    pub state_id: Option<String>,
    /// Lower runs first (default 0).
    pub priority: Option<i32>,
    pub group_id: Option<i32>,
    /// Pins the task to this node.
    pub worker_id: Option<i64>,
    pub cwd: Option<String>,
    /// Not claimed before this time.
    pub run_after: Option<DateTime<Utc>>,
    /// Not claimed before this many seconds from now (database clock), when `run_after` is unset.
    /// Not a column.
    #[serde(skip)]
    pub run_after_in: Option<f64>,
    /// Seconds: a node kills the task after this long; a SQL consumer's lease.
    pub timeout: Option<f64>,
    /// Default: the group's `max_attempts`, else 1.
    pub max_attempts: Option<i32>,
    /// When the schedule fires first.
    pub next_start: Option<DateTime<Utc>>,
    /// First firing this many seconds from now (database clock), when `next_start` is unset. Not a
    /// column: set by the CLI's `--at +DURATION` and `--every`.
    #[serde(skip)]
    pub next_start_in: Option<f64>,
    pub shed_period_id: Option<String>,
    pub shed_period_count: Option<i32>,
    pub shed_clone: Option<bool>,
    /// A cron schedule instead of a period: five fields, or six with seconds first (`crate::cron`).
    /// Without `next_start` it runs from now on (its first firing is its first slot).
    pub shed_cron: Option<String>,
    /// The IANA time zone `shed_cron` is read in (default UTC).
    pub shed_timezone: Option<String>,
    /// Unique among active tasks: submitting it again returns the existing id.
    pub dedup_key: Option<String>,
    /// Runs when every one of these is CS.
    pub depends_on: Option<Vec<i64>>,
}

impl NewTask {
    /// A task run as an OS process (argv, no shell).
    pub fn command<I, S>(argv: I) -> NewTask
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        NewTask {
            command: Some(argv.into_iter().map(Into::into).collect()),
            ..NewTask::default()
        }
    }

    /// A task for the handler (or SQL consumer) of `topic`.
    pub fn topic(topic: impl Into<String>) -> NewTask {
        NewTask {
            topic: Some(topic.into()),
            ..NewTask::default()
        }
    }

    pub fn params(mut self, params: Value) -> Self {
        self.params = Some(params);
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout.as_secs_f64());
        self
    }

    /// Not before `delay` from now (database clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_after_in = Some(delay.as_secs_f64());
        self
    }

    pub fn group(mut self, group_id: i32) -> Self {
        self.group_id = Some(group_id);
        self
    }

    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    pub fn depends_on(mut self, ids: impl IntoIterator<Item = i64>) -> Self {
        self.depends_on.get_or_insert_with(Vec::new).extend(ids);
        self
    }

    /// A cron schedule (`crate::cron`) read in `timezone` (an IANA name; None: UTC). The task
    /// becomes a draft that each slot queues again (`clone`: a template each slot copies).
    pub fn cron(mut self, expr: impl Into<String>, timezone: Option<&str>, clone: bool) -> Self {
        self.shed_cron = Some(expr.into());
        self.shed_timezone = timezone.map(str::to_owned);
        self.shed_clone = Some(clone);
        self.state_id = Some("DR".into());
        self
    }

    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        match (&self.command, &self.topic) {
            (None, None) => {
                return Err(field(
                    "command",
                    "required: a task needs a command (or a topic)",
                ))
            }
            (Some(argv), _) if argv.is_empty() => {
                return Err(field("command", "must be a non-empty array of strings"))
            }
            (Some(argv), _) if argv[0].is_empty() => {
                return Err(field("command", "the program (first element) is empty"))
            }
            (_, Some(topic)) if topic.is_empty() => {
                return Err(field("topic", "must not be empty"))
            }
            _ => {}
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
        for (key, delay) in [
            ("run_after", self.run_after_in),
            ("next_start", self.next_start_in),
        ] {
            if delay.is_some_and(|d| !d.is_finite()) {
                return Err(field(key, "the delay must be a finite number of seconds"));
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
        if let Some(expr) = &self.shed_cron {
            if self.shed_period_id.is_some() {
                return Err(field(
                    "shed_cron",
                    "a schedule has a period (shed_period_id) or a cron expression, not both",
                ));
            }
            if let Err(e) = crate::cron::CronSchedule::parse(expr, self.shed_timezone.as_deref()) {
                let key = match e {
                    crate::cron::CronError::TimeZone(_) => "shed_timezone",
                    _ => "shed_cron",
                };
                return Err(field(key, e.to_string()));
            }
        } else if self.shed_timezone.is_some() {
            return Err(field("shed_timezone", "only with shed_cron"));
        }
        if self.worker_id.is_some_and(|w| w < 1) {
            return Err(field("worker_id", "must be a positive worker id"));
        }
        Ok(())
    }
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

/// Submits a task through `long_task.submit` after validating it; returns its id (the existing
/// task's id when its dedup key is taken).
pub async fn submit<C: GenericClient + Sync>(client: &C, task: &NewTask) -> Result<i64, TaskError> {
    task.validate()?;
    let row = client
        .query_one(
            "SELECT long_task.submit(
                 p_command => $1::text[]::varchar[], p_topic => $2, p_params => $3,
                 p_state_id => $4, p_priority => $5, p_group_id => $6, p_worker_id => $7,
                 p_cwd => $8,
                 p_run_after => coalesce($9, now() + make_interval(secs => $10)),
                 p_timeout => $11, p_max_attempts => $12,
                 p_next_start => coalesce($13, now() + make_interval(secs => $14)),
                 p_shed_period_id => $15, p_shed_period_count => $16, p_shed_clone => $17,
                 p_dedup_key => $18, p_depends_on => $19,
                 p_shed_cron => $20, p_shed_timezone => $21)",
            &[
                &task.command,
                &task.topic,
                &task.params,
                &task.state_id,
                &task.priority,
                &task.group_id,
                &task.worker_id,
                &task.cwd,
                &task.run_after,
                &task.run_after_in,
                &task.timeout,
                &task.max_attempts,
                &task.next_start,
                &task.next_start_in,
                &task.shed_period_id,
                &task.shed_period_count,
                &task.shed_clone,
                &task.dedup_key,
                &task.depends_on,
                &task.shed_cron,
                &task.shed_timezone,
            ],
        )
        .await
        .map_err(classify("submitting a task"))?;
    Ok(row.get(0))
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

impl Transition {
    /// Whether the task is (now) in the asked-for state.
    pub fn is_done(&self) -> bool {
        matches!(self, Transition::Done { .. })
    }
}

/// Calls `long_task.cancel` or `long_task.requeue` (same result shape).
async fn transition<C: GenericClient + Sync>(
    client: &C,
    function: &'static str,
    id: i64,
) -> Result<Transition, DbError> {
    let sql = format!("SELECT before::text, after::text FROM long_task.{function}($1)");
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(DbError::query(function))?;
    let Some(row) = row else {
        return Ok(Transition::NotFound);
    };
    let before: String = row.get(0);
    Ok(match row.get::<_, Option<String>>(1) {
        Some(after) => Transition::Done { before, after },
        None => Transition::Refused(before),
    })
}

/// Cancels a task (`long_task.cancel`): a waiting or draft task ends `CC` at once, a running one
/// becomes `AC` (its node kills the process group and writes `CC`). A task already cancelling is
/// left alone; a final task is refused.
pub async fn cancel<C: GenericClient + Sync>(client: &C, id: i64) -> Result<Transition, DbError> {
    transition(client, "cancel", id).await
}

/// Queues a final or draft task again (`long_task.requeue`): a new attempt from a clean outcome.
/// A waiting task is left alone; a running one is refused (cancel it first).
pub async fn requeue<C: GenericClient + Sync>(client: &C, id: i64) -> Result<Transition, DbError> {
    transition(client, "requeue", id).await
}

/// One task as a JSON object (every column, plus `state_name`); None when there is no such task.
pub async fn get<C: GenericClient + Sync>(client: &C, id: i64) -> Result<Option<Value>, DbError> {
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

/// A task as a program reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub id: i64,
    pub state: TaskState,
    pub topic: Option<String>,
    pub params: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub created: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
}

impl TaskInfo {
    /// CS, CF or CC.
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

/// One task, typed; None when there is no such task.
pub async fn info<C: GenericClient + Sync>(
    client: &C,
    id: i64,
) -> Result<Option<TaskInfo>, DbError> {
    let row = client
        .query_opt(
            "SELECT id, state_id::text, topic, params, result, error, attempt, max_attempts, exit_code,
                    exit_signal, created, finished
               FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(DbError::query("reading a task"))?;
    let Some(r) = row else { return Ok(None) };
    let code: String = r.get(1);
    let state = TaskState::from_code(&code).ok_or(DbError::Unexpected("unknown task state"))?;
    Ok(Some(TaskInfo {
        id: r.get(0),
        state,
        topic: r.get(2),
        params: r.get(3),
        result: r.get(4),
        error: r.get(5),
        attempt: r.get(6),
        max_attempts: r.get(7),
        exit_code: r.get(8),
        exit_signal: r.get(9),
        created: r.get(10),
        finished: r.get(11),
    }))
}

/// Which tasks `list` returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub group_id: Option<i32>,
    pub limit: i64,
}

/// Tasks, newest first, without their output tails (use `get` for those).
pub async fn list<C: GenericClient + Sync>(
    client: &C,
    filter: &TaskFilter,
) -> Result<Vec<Value>, DbError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> NewTask {
        NewTask::command(["true"])
    }

    #[test]
    fn validation_names_the_key() {
        assert!(task().validate().is_ok());
        assert!(NewTask::topic("t").validate().is_ok());
        let cases = [
            (NewTask::default(), "command"),
            (NewTask::command(Vec::<String>::new()), "command"),
            (NewTask::command([""]), "command"),
            (NewTask::topic(""), "topic"),
            (
                NewTask {
                    state_id: Some("AE".into()),
                    ..task()
                },
                "state_id",
            ),
            (task().max_attempts(0), "max_attempts"),
            (
                NewTask {
                    timeout: Some(-1.0),
                    ..task()
                },
                "timeout",
            ),
            (
                NewTask {
                    run_after_in: Some(f64::NAN),
                    ..task()
                },
                "run_after",
            ),
            (
                NewTask {
                    shed_period_id: Some("YEAR".into()),
                    shed_period_count: Some(1),
                    ..task()
                },
                "shed_period_id",
            ),
            (
                NewTask {
                    worker_id: Some(0),
                    ..task()
                },
                "worker_id",
            ),
            (
                NewTask {
                    shed_cron: Some("61 * * * *".into()),
                    ..task()
                },
                "shed_cron",
            ),
            (
                NewTask {
                    shed_cron: Some("* * * * *".into()),
                    shed_period_id: Some("MIN".into()),
                    shed_period_count: Some(1),
                    ..task()
                },
                "shed_cron",
            ),
            (
                NewTask {
                    shed_cron: Some("* * * * *".into()),
                    shed_timezone: Some("Mars/Olympus".into()),
                    ..task()
                },
                "shed_timezone",
            ),
            (
                NewTask {
                    shed_timezone: Some("Europe/Berlin".into()),
                    ..task()
                },
                "shed_timezone",
            ),
        ];
        for (t, key) in cases {
            assert_eq!(t.validate().unwrap_err().key, key, "{t:?}");
        }
        let cron = task().cron("*/5 * * * *", Some("Europe/Berlin"), true);
        assert!(cron.validate().is_ok());
        assert_eq!(cron.state_id.as_deref(), Some("DR"));
        assert_eq!(cron.shed_clone, Some(true));
    }

    #[test]
    fn unknown_json_keys_are_refused() {
        let err = serde_json::from_str::<NewTask>(r#"{"command":["true"],"colour":"red"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn builders_set_the_columns() {
        let t = NewTask::topic("t")
            .priority(3)
            .group(2)
            .depends_on([1])
            .depends_on([2])
            .delay(Duration::from_secs(5));
        assert_eq!(t.priority, Some(3));
        assert_eq!(t.group_id, Some(2));
        assert_eq!(t.depends_on, Some(vec![1, 2]));
        assert_eq!(t.run_after_in, Some(5.0));
    }
}
