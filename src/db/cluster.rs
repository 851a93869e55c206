//! The cluster's SQL calls (DESIGN.md §4), typed: the coordinator lock, election, the
//! coordinator's round, deposing a hung coordinator, releasing self-fenced runs, firing schedules
//! under a term, and the cluster overview of `pgtaskd status`. The logic lives in the schema
//! (`migrations/0003_cluster.sql`); this module only calls it.
//!
//! Must never take a session lock on a pooled connection: the lock calls take a dedicated `Client`.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{DbError, Pool};

/// Advisory lock namespace (first int of the two-int key) of group coordinator locks; must match
/// `long_task.ns_group()`.
pub const NS_GROUP: i32 = 0x7074_6e02;

/// One thing the coordinator's round did (or `deposed`: it is no longer the coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorAction {
    pub kind: String,
    pub worker_id: Option<i64>,
    pub task_id: Option<i64>,
    pub run_id: Option<Uuid>,
    pub detail: Option<String>,
}

impl CoordinatorAction {
    pub fn is_deposed(&self) -> bool {
        self.kind == "deposed"
    }
}

/// Names this session `pgtaskd w<worker id> <purpose>` (for sessions opened before the id was known).
pub async fn name_session(client: &Client, worker_id: i64, purpose: &str) -> Result<(), DbError> {
    client
        .execute(
            "SELECT set_config('application_name', $1, false)",
            &[&format!("pgtaskd w{worker_id} {purpose}")],
        )
        .await
        .map_err(DbError::query("naming the session"))?;
    Ok(())
}

/// Waits for the group's coordinator lock at most `wait` (the session's `lock_timeout`); true when
/// this session now holds it.
pub async fn wait_group_lock(
    client: &Client,
    group_id: i32,
    wait: Duration,
) -> Result<bool, DbError> {
    let ms = format!("{}ms", wait.as_millis().max(1));
    client
        .execute("SELECT set_config('lock_timeout', $1, false)", &[&ms])
        .await
        .map_err(DbError::query("setting the lock wait"))?;
    match client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&NS_GROUP, &group_id])
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
        Err(source) => Err(DbError::Query {
            context: "waiting for the coordinator lock",
            source,
        }),
    }
}

/// Starts a new term for the group; the session must hold the group lock.
pub async fn become_coordinator(
    client: &Client,
    group_id: i32,
    worker_id: i64,
) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT long_task.become_coordinator($1, $2)",
            &[&group_id, &worker_id],
        )
        .await
        .map_err(DbError::query("starting a coordinator term"))?;
    Ok(row.get(0))
}

/// Ends the sessions of the group lock's holder when its heartbeat is older than `timeout`.
pub async fn depose_stale_coordinator(
    client: &Client,
    group_id: i32,
    worker_id: i64,
    timeout: Duration,
) -> Result<Option<i64>, DbError> {
    let row = client
        .query_one(
            "SELECT long_task.depose_stale_coordinator($1, $2, $3)",
            &[&group_id, &worker_id, &timeout.as_secs_f64()],
        )
        .await
        .map_err(DbError::query("checking the coordinator's heartbeat"))?;
    Ok(row.get(0))
}

/// The coordinator's round: detect dead nodes and hand their tasks back, under `term`.
pub async fn coordinate(
    client: &Client,
    group_id: i32,
    worker_id: i64,
    term: i64,
    timeout: Duration,
) -> Result<Vec<CoordinatorAction>, DbError> {
    let rows = client
        .query(
            "SELECT kind, worker_id, task_id, run_id, detail FROM long_task.coordinate($1, $2, $3, $4)",
            &[&group_id, &worker_id, &term, &timeout.as_secs_f64()],
        )
        .await
        .map_err(DbError::query("coordinating the group"))?;
    Ok(rows
        .iter()
        .map(|r| CoordinatorAction {
            kind: r.get(0),
            worker_id: r.get(1),
            task_id: r.get(2),
            run_id: r.get(3),
            detail: r.get(4),
        })
        .collect())
}

/// Hands back runs this node killed when it fenced itself (unless already handed back).
pub async fn release_runs(
    pool: &Pool,
    worker_id: i64,
    runs: &[(i64, Uuid)],
) -> Result<i32, DbError> {
    let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
    let run_ids: Vec<Uuid> = runs.iter().map(|r| r.1).collect();
    let conn = pool.get().await?;
    let row = conn
        .query_one(
            "SELECT long_task.release_runs($1, $2, $3)",
            &[&worker_id, &ids, &run_ids],
        )
        .await
        .map_err(DbError::query("releasing self-fenced runs"))?;
    Ok(row.get(0))
}

/// Fires the due schedules of a group under the coordinator's term. `None` for the count: the
/// term is no longer this node's.
pub async fn fire_schedules_as(
    pool: &Pool,
    group_id: i32,
    worker_id: i64,
    term: i64,
) -> Result<(Option<i32>, Option<f64>), DbError> {
    let conn = pool.get().await?;
    let row = conn
        .query_one(
            "SELECT fired, next_due_in FROM long_task.fire_schedules_as($1, $2, $3)",
            &[&group_id, &worker_id, &term],
        )
        .await
        .map_err(DbError::query("firing schedules"))?;
    let fired: i32 = row.get(0);
    Ok(((fired >= 0).then_some(fired), row.get(1)))
}

/// One node as `pgtaskd status` shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub worker_id: i64,
    pub node_name: Option<String>,
    pub group_id: i32,
    pub active: bool,
    pub alive: bool,
    pub heartbeat_age_secs: Option<f64>,
    pub running: i64,
    pub max_task_count: i32,
    pub stop: i16,
}

/// One group as `pgtaskd status` shows it.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub group_id: i32,
    pub coordinator: Option<i64>,
    pub term: Option<i64>,
    pub coordinator_alive: bool,
    pub waiting: i64,
    pub running: i64,
}

/// The nodes (alive = liveness lock held), their heartbeat age and running counts.
pub async fn node_status(client: &Client) -> Result<Vec<NodeStatus>, DbError> {
    let rows = client
        .query(
            "SELECT w.id, w.node_name, w.group_id, w.active,
                    w.id IN (SELECT h.key FROM long_task.advisory_holders(long_task.ns_node()) h),
                    extract(epoch FROM now() - w.heartbeat_at)::float8,
                    (SELECT count(*) FROM long_task.task t WHERE t.worker_id = w.id AND t.state_id IN ('AE', 'AC')),
                    w.max_task_count, w.stop
               FROM long_task.worker w
              ORDER BY w.group_id, w.id",
            &[],
        )
        .await
        .map_err(DbError::query("reading the nodes"))?;
    Ok(rows
        .iter()
        .map(|r| NodeStatus {
            worker_id: r.get(0),
            node_name: r.get(1),
            group_id: r.get(2),
            active: r.get(3),
            alive: r.get(4),
            heartbeat_age_secs: r.get(5),
            running: r.get(6),
            max_task_count: r.get(7),
            stop: r.get(8),
        })
        .collect())
}

/// Every group with nodes, tasks or a coordinator: its coordinator and term, queue depth, running.
pub async fn group_status(client: &Client) -> Result<Vec<GroupStatus>, DbError> {
    let rows = client
        .query(
            "WITH g AS (SELECT group_id FROM long_task.worker
                        UNION SELECT group_id FROM long_task.coordinator
                        UNION SELECT DISTINCT group_id FROM long_task.task WHERE state_id LIKE 'A%')
             SELECT g.group_id, c.worker_id, c.term,
                    EXISTS (SELECT 1 FROM long_task.advisory_holders(long_task.ns_group()) h
                             WHERE h.key = g.group_id::oid::bigint),
                    (SELECT count(*) FROM long_task.task t WHERE t.group_id = g.group_id AND t.state_id = 'AW'),
                    (SELECT count(*) FROM long_task.task t WHERE t.group_id = g.group_id AND t.state_id IN ('AE', 'AC'))
               FROM g LEFT JOIN long_task.coordinator c ON c.group_id = g.group_id
              ORDER BY g.group_id",
            &[],
        )
        .await
        .map_err(DbError::query("reading the groups"))?;
    Ok(rows
        .iter()
        .map(|r| GroupStatus {
            group_id: r.get(0),
            coordinator: r.get(1),
            term: r.get(2),
            coordinator_alive: r.get(3),
            waiting: r.get(4),
            running: r.get(5),
        })
        .collect())
}
