//! Operator changes that are plain UPDATEs, not state changes: a task's priority, a node's stop
//! code (`worker.stop`: pause, drain, cancel all) and its process limit (`worker.max_task_count`).
//! Each is one statement that updates the row and records an event (`priority`, `node_stop`,
//! `node_limit`, detail `old -> new by <login role>`, through `long_task.record_change`; the
//! CTE that calls it is read by the final SELECT, so it runs) in the same transaction, so the console,
//! the HTTP API and any later CLI verb share it. The triggers do the rest: a re-prioritized
//! waiting task gets a new entry on the ready ring, a node row's change notifies that node.
//!
//! Cancel and re-queue are not here: they are state changes, through `tasks::cancel` and
//! `tasks::requeue` (`long_task.cancel`/`requeue`, which record their own events). The one
//! operator change that is more than an UPDATE, a node's forced hand-over, is a SQL function
//! (`long_task.hand_over_node`, which records its own events); `hand_over_node` here calls it.

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// No such task or node.
    NotFound,
    /// The value before and after.
    Done { before: T, after: T },
}

/// Sets a task's priority (lower runs first). Any state may take it; it matters while waiting.
pub async fn set_priority<C: GenericClient + Sync>(
    client: &C,
    id: i64,
    priority: i32,
) -> Result<Change<i32>, DbError> {
    let row = client
        .query_opt(
            "WITH old AS (
                 SELECT t.id, t.priority FROM long_task.task t WHERE t.id = $1 FOR UPDATE
             ), upd AS (
                 UPDATE long_task.task t SET priority = $2 FROM old WHERE t.id = old.id
                 RETURNING t.id, t.group_id, t.run_id, old.priority AS before, t.priority AS after
             ), ev AS (
                 SELECT long_task.record_change('priority', u.group_id, u.id, NULL, u.run_id,
                                                format('%s -> %s', u.before, u.after))
                   FROM upd u WHERE u.before <> u.after
             )
             SELECT u.before, u.after, (SELECT count(*) FROM ev) FROM upd u",
            &[&id, &priority],
        )
        .await
        .map_err(DbError::query("changing a task's priority"))?;
    Ok(match row {
        Some(r) => Change::Done {
            before: r.get(0),
            after: r.get(1),
        },
        None => Change::NotFound,
    })
}

/// Which column of a node's row `set_node` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSetting {
    /// `worker.stop`: 0 run, 1 pause (claim nothing), 2 drain then exit, 3 cancel all then exit.
    Stop(i16),
    /// `worker.max_task_count`: at most this many tasks at once (0: claim nothing).
    Limit(i32),
}

/// Changes a node's stop code or process limit; the node hears of it at once (`worker_notify`).
/// Values out of range are refused by the table's checks (`worker_stop_code`,
/// `worker_max_task_count`) before anything changes; callers check them first for a clear error.
pub async fn set_node<C: GenericClient + Sync>(
    client: &C,
    worker_id: i64,
    setting: NodeSetting,
) -> Result<Change<i64>, DbError> {
    let (kind, column) = match setting {
        NodeSetting::Stop(_) => ("node_stop", "stop"),
        NodeSetting::Limit(_) => ("node_limit", "max_task_count"),
    };
    // `column` is one of two constants above, never input.
    let sql = format!(
        "WITH old AS (
             SELECT w.id, w.{column}::bigint AS v FROM long_task.worker w WHERE w.id = $1 FOR UPDATE
         ), upd AS (
             UPDATE long_task.worker w SET {column} = $2 FROM old WHERE w.id = old.id
             RETURNING w.id, w.group_id, old.v AS before, w.{column}::bigint AS after
         ), ev AS (
             SELECT long_task.record_change('{kind}', u.group_id, NULL, u.id, NULL,
                                            format('%s -> %s', u.before, u.after))
               FROM upd u WHERE u.before <> u.after
         )
         SELECT u.before, u.after, (SELECT count(*) FROM ev) FROM upd u"
    );
    let row = match setting {
        NodeSetting::Stop(v) => client.query_opt(&sql, &[&worker_id, &v]).await,
        NodeSetting::Limit(v) => client.query_opt(&sql, &[&worker_id, &v]).await,
    }
    .map_err(DbError::query("changing a node's settings"))?;
    Ok(match row {
        Some(r) => Change::Done {
            before: r.get(0),
            after: r.get(1),
        },
        None => Change::NotFound,
    })
}

/// One run a hand-over found on the node, and what became of it (`long_task.hand_over_node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandedOverRun {
    pub task_id: i64,
    pub run_id: Option<Uuid>,
    /// `requeued` (killed, queued again for another node), `finishing` (left to finish: no
    /// kill), `pinned` (pinned to the node: left running) or `cancelling` (ends CC as usual).
    pub action: String,
}

/// The actions of `long_task.hand_over_node`, in the order they are reported.
pub const HAND_OVER_ACTIONS: [&str; 4] = ["requeued", "finishing", "pinned", "cancelling"];

/// How many runs each action of `HAND_OVER_ACTIONS` counts.
pub fn count_actions(runs: &[HandedOverRun]) -> Vec<(&'static str, usize)> {
    HAND_OVER_ACTIONS
        .iter()
        .map(|a| (*a, runs.iter().filter(|r| r.action == *a).count()))
        .collect()
}

/// What a hand-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// No node with that worker id: nothing changed.
    NotFound,
    /// The node claims nothing now (stop code set); these were its runs.
    Done(Vec<HandedOverRun>),
}

/// Hands a node's tasks over to the other nodes of its group (`long_task.hand_over_node`): the
/// node stops claiming, and with `kill` its running tasks are killed and queued again (not as
/// lost runs, their attempt not charged); without, they finish where they run. A role without
/// the grant (or the group) gets the database's refusal, and nothing changes.
pub async fn hand_over_node<C: GenericClient + Sync>(
    client: &C,
    worker_id: i64,
    kill: bool,
) -> Result<HandOver, DbError> {
    let rows = match client
        .query(
            "SELECT task_id, run_id, action FROM long_task.hand_over_node($1, $2)",
            &[&worker_id, &kill],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::NO_DATA_FOUND) => return Ok(HandOver::NotFound),
        Err(e) => return Err(DbError::query("handing a node's tasks over")(e)),
    };
    Ok(HandOver::Done(
        rows.iter()
            .map(|r| HandedOverRun {
                task_id: r.get(0),
                run_id: r.get(1),
                action: r.get(2),
            })
            .collect(),
    ))
}
