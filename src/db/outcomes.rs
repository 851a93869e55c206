//! What a node writes about its runs: each attempt's outcome (`long_task.complete_runs`, fenced
//! by run_id) and the live tails of running attempts (`long_task.record_output`).
//!
//! Must never hold a pooled connection longer than one statement.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::codes::TaskState;
use super::queries::query;
use super::{DbError, Pool};

/// The outcome of one run, to be written under its run_id.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    pub task_id: i64,
    pub run_id: Uuid,
    pub state: TaskState,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
    /// What a handler returned (`task.result`).
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

impl RunOutcome {
    /// A successful outcome of a run (test fixtures).
    #[cfg(test)]
    pub(crate) fn success(task_id: i64) -> RunOutcome {
        RunOutcome {
            task_id,
            run_id: Uuid::new_v4(),
            state: TaskState::Succeeded,
            error: None,
            exit_code: Some(0),
            exit_signal: None,
            stdout_tail: None,
            stderr_tail: None,
            result: None,
        }
    }
}

/// A running attempt's tails as they are now, to be written under its run_id (`None`: that stream
/// did not change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOutput {
    pub task_id: i64,
    pub run_id: Uuid,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
}

/// Writes running attempts' tails (`long_task.record_output`): only where the task is still
/// AE/AC under that run_id, skipping rows another transaction holds. Returns the ids written.
pub async fn record_output(pool: &Pool, runs: &[LiveOutput]) -> Result<Vec<i64>, DbError> {
    let ids: Vec<i64> = runs.iter().map(|r| r.task_id).collect();
    let run_ids: Vec<Uuid> = runs.iter().map(|r| r.run_id).collect();
    let stdout: Vec<Option<&str>> = runs.iter().map(|r| r.stdout_tail.as_deref()).collect();
    let stderr: Vec<Option<&str>> = runs.iter().map(|r| r.stderr_tail.as_deref()).collect();
    let rows = query(
        pool,
        "writing live output",
        "SELECT id FROM long_task.record_output($1, $2, $3, $4)",
        &[
            (&ids, Type::INT8_ARRAY),
            (&run_ids, Type::UUID_ARRAY),
            (&stdout, Type::TEXT_ARRAY),
            (&stderr, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Writes outcomes, each guarded by its run_id. Returns the ids whose write took effect with the
/// state written; an outcome missing from the result was fenced (a stale run).
pub async fn finish_runs(
    pool: &Pool,
    outcomes: &[RunOutcome],
) -> Result<Vec<(i64, String)>, DbError> {
    let conn = pool.get().await?;
    let columns = OutcomeColumns::of(outcomes);
    let rows = conn
        .query_prepared(COMPLETE_RUNS, &columns.params())
        .await
        .map_err(DbError::query("writing task outcomes"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `finish_runs` on a given connection (start-up replays the spool before the pool exists).
pub async fn finish_runs_on(
    client: &impl GenericClient,
    outcomes: &[RunOutcome],
) -> Result<Vec<(i64, String)>, DbError> {
    let columns = OutcomeColumns::of(outcomes);
    let rows = client
        .query_typed(COMPLETE_RUNS, &columns.params())
        .await
        .map_err(DbError::query("writing task outcomes"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// complete_runs: finish_runs plus results (and retry times, unused by nodes); a failure with
/// attempts left goes back to AW with its back-off, every attempt lands in task_run.
const COMPLETE_RUNS: &str =
    "SELECT id, state_id::text FROM long_task.complete_runs($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)";

/// A batch of outcomes as the columns `complete_runs` takes.
struct OutcomeColumns<'a> {
    ids: Vec<i64>,
    run_ids: Vec<Uuid>,
    states: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    codes: Vec<Option<i32>>,
    signals: Vec<Option<i32>>,
    stdout: Vec<Option<&'a str>>,
    stderr: Vec<Option<&'a str>>,
    results: Vec<Option<&'a serde_json::Value>>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(outcomes: &'a [RunOutcome]) -> Self {
        OutcomeColumns {
            ids: outcomes.iter().map(|o| o.task_id).collect(),
            run_ids: outcomes.iter().map(|o| o.run_id).collect(),
            states: outcomes.iter().map(|o| o.state.code()).collect(),
            errors: outcomes.iter().map(|o| o.error.as_deref()).collect(),
            codes: outcomes.iter().map(|o| o.exit_code).collect(),
            signals: outcomes.iter().map(|o| o.exit_signal).collect(),
            stdout: outcomes.iter().map(|o| o.stdout_tail.as_deref()).collect(),
            stderr: outcomes.iter().map(|o| o.stderr_tail.as_deref()).collect(),
            results: outcomes.iter().map(|o| o.result.as_ref()).collect(),
        }
    }

    fn params(&self) -> [(&(dyn ToSql + Sync), Type); 9] {
        [
            (&self.ids, Type::INT8_ARRAY),
            (&self.run_ids, Type::UUID_ARRAY),
            (&self.states, Type::TEXT_ARRAY),
            (&self.errors, Type::TEXT_ARRAY),
            (&self.codes, Type::INT4_ARRAY),
            (&self.signals, Type::INT4_ARRAY),
            (&self.stdout, Type::TEXT_ARRAY),
            (&self.stderr, Type::TEXT_ARRAY),
            (&self.results, Type::JSONB_ARRAY),
        ]
    }
}
