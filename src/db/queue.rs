//! The statements of the Rust client API (`crate::client`): publishing, cancelling and reading
//! tasks. The logic lives in the schema (`long_task.publish`, the state machine trigger); this
//! module only calls it.
//!
//! Works on any `GenericClient` (a pooled connection or the caller's transaction); must never
//! open a transaction of its own.

use tokio_postgres::GenericClient;

use super::queries::TaskState;
use super::DbError;

/// A task to publish. Build it with [`NewTask::topic`] (a handler / consumer task) or
/// [`NewTask::command`] (a process task) and the setters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewTask {
    pub topic: Option<String>,
    pub command: Option<Vec<String>>,
    pub params: Option<serde_json::Value>,
    /// Lower runs first.
    pub priority: i32,
    /// None: the group's default (`group_settings.max_attempts`, else 1).
    pub max_attempts: Option<i32>,
    /// Seconds: the node's timeout, or a consumer's lease.
    pub timeout: Option<f64>,
    /// Not before this many seconds from now (database clock).
    pub delay: Option<f64>,
    pub group_id: i32,
    /// Unique among active tasks: publishing it again returns the existing id.
    pub dedup_key: Option<String>,
    /// Runs when every one of these is CS.
    pub depends_on: Vec<i64>,
}

impl NewTask {
    /// A task for the handler (or SQL consumer) of `topic`.
    pub fn topic(topic: impl Into<String>) -> NewTask {
        NewTask {
            topic: Some(topic.into()),
            ..NewTask::default()
        }
    }

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

    pub fn params(mut self, params: serde_json::Value) -> Self {
        self.params = Some(params);
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout.as_secs_f64());
        self
    }

    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay.as_secs_f64());
        self
    }

    pub fn group(mut self, group_id: i32) -> Self {
        self.group_id = group_id;
        self
    }

    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    pub fn depends_on(mut self, ids: impl IntoIterator<Item = i64>) -> Self {
        self.depends_on.extend(ids);
        self
    }
}

/// A task as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub id: i64,
    pub state: TaskState,
    pub topic: Option<String>,
    pub params: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub created: chrono::DateTime<chrono::Utc>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

impl TaskInfo {
    /// CS, CF or CC.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// Publishes a task through `long_task.publish` (dedup and dependencies included); returns its id.
pub async fn publish<C: GenericClient + Sync>(client: &C, task: &NewTask) -> Result<i64, DbError> {
    let depends_on = (!task.depends_on.is_empty()).then_some(&task.depends_on);
    let row = client
        .query_one(
            "SELECT long_task.publish(
                 p_topic => $1, p_params => $2,
                 p_run_after => CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3::float8) END,
                 p_timeout => $4, p_priority => $5, p_max_attempts => $6, p_group_id => $7,
                 p_dedup_key => $8, p_depends_on => $9, p_command => $10::text[]::varchar[])",
            &[
                &task.topic,
                &task.params,
                &task.delay,
                &task.timeout,
                &task.priority,
                &task.max_attempts,
                &task.group_id,
                &task.dedup_key,
                &depends_on,
                &task.command,
            ],
        )
        .await
        .map_err(DbError::query("publishing a task"))?;
    Ok(row.get(0))
}

/// Requests the cancel of an active task (a waiting or draft one ends CC at once; a running one is
/// killed by its node). False when the task is missing or already final.
pub async fn cancel<C: GenericClient + Sync>(client: &C, id: i64) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE long_task.task
                SET state_id = CASE WHEN state_id = 'DR' THEN 'CC' ELSE 'AC' END
              WHERE id = $1 AND state_id IN ('DR', 'AW', 'AE')",
            &[&id],
        )
        .await
        .map_err(DbError::query("cancelling a task"))?;
    Ok(n > 0)
}

/// Reads a task.
pub async fn get<C: GenericClient + Sync>(
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
