//! The cluster's SQL calls (docs/design.md §4), typed: the coordinator lock, election, the
//! coordinator's round, watching a node's liveness lock, deposing a hung coordinator, releasing
//! self-fenced runs. The logic lives in the schema
//! (`migrations/schema/cluster/`); this module only calls it.
//!
//! Must never take a session lock on a pooled connection: the lock calls take a dedicated `Client`.

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use uuid::Uuid;

pub use super::codes::NS_GROUP;
use super::codes::NS_NODE;
use super::DbError;

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

/// Waits for the group's coordinator lock until this session holds it: a blocking wait with no
/// `lock_timeout`, so a follower's wait never ends in an error on the server (nothing in
/// PostgreSQL's log) and it wins the moment the holder's session ends. The caller bounds the wait
/// (dropping the future closes nothing; drop the client to give the wait up) and checks for a
/// hung holder on another connection meanwhile (`depose_stale_coordinator`).
pub async fn wait_group_lock(client: &Client, group_id: i32) -> Result<(), DbError> {
    client
        .execute("SELECT set_config('lock_timeout', '0', false)", &[])
        .await
        .map_err(DbError::query("clearing the lock wait limit"))?;
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&NS_GROUP, &group_id])
        .await
        .map_err(DbError::query("waiting for the coordinator lock"))?;
    Ok(())
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

/// What one coordinator round did and saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    /// What it did (or `deposed`: it is no longer the coordinator).
    pub actions: Vec<CoordinatorAction>,
    /// The live nodes of the group (not this one), each with the seconds until its heartbeat
    /// deadline: the coordinator watches their liveness locks and wakes at the earliest deadline.
    pub live: Vec<(i64, f64)>,
    /// Nodes whose liveness lock is free but that have not beaten since this coordinator's
    /// session began (a server restart or failover ended every session): dead only once their
    /// heartbeat is stale, each with the seconds until then. Not watched (their lock is free).
    pub reconnecting: Vec<(i64, f64)>,
}

/// The coordinator's round: detect dead nodes and hand their tasks back, under `term`.
pub async fn coordinate(
    client: &Client,
    group_id: i32,
    worker_id: i64,
    term: i64,
    timeout: Duration,
) -> Result<Round, DbError> {
    let rows = client
        .query_typed(
            "SELECT kind, worker_id, task_id, run_id, detail, due_in
               FROM long_task.coordinate($1, $2, $3, $4)",
            &[
                (&group_id, Type::INT4),
                (&worker_id, Type::INT8),
                (&term, Type::INT8),
                (&timeout.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await
        .map_err(DbError::query("coordinating the group"))?;
    let mut round = Round::default();
    for r in &rows {
        let kind: String = r.get(0);
        let worker: Option<i64> = r.get(1);
        match (kind.as_str(), worker) {
            ("live", Some(worker)) => {
                round
                    .live
                    .push((worker, r.get::<_, Option<f64>>(5).unwrap_or(0.0)));
            }
            ("reconnecting", Some(worker)) => {
                round
                    .reconnecting
                    .push((worker, r.get::<_, Option<f64>>(5).unwrap_or(0.0)));
            }
            _ => round.actions.push(CoordinatorAction {
                kind,
                worker_id: worker,
                task_id: r.get(2),
                run_id: r.get(3),
                detail: r.get(4),
            }),
        }
    }
    Ok(round)
}

/// Waits (on its own dedicated session, without a time limit) until node `worker_id`'s liveness
/// lock comes free — its session ended: crash, kill, dropped connection — then lets it go at
/// once, so a restarted node can take it again. The hold is shared: it never makes the node look
/// alive (`long_task.advisory_holders` counts exclusive holds only).
pub async fn watch_liveness_lock(client: &Client, worker_id: i64) -> Result<(), DbError> {
    let key = i32::try_from(worker_id).unwrap_or(i32::MAX);
    client
        .query_typed(
            "SELECT pg_advisory_lock_shared($1, $2), pg_advisory_unlock_shared($1, $2)",
            &[(&NS_NODE, Type::INT4), (&key, Type::INT4)],
        )
        .await
        .map_err(DbError::query("watching a node's liveness lock"))?;
    Ok(())
}

/// How many of `workers` hold their liveness lock now (one read of `pg_locks`): the coordinator's
/// check of the live nodes it has no watcher session for. Fewer than `workers.len()` means one of
/// them died (or lost its session) and a round is due.
pub async fn liveness_locks_held(client: &Client, workers: &[i64]) -> Result<usize, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM long_task.advisory_holders(long_task.ns_node()) h
              WHERE h.key = ANY($1::bigint[])",
            &[&workers],
        )
        .await
        .map_err(DbError::query("reading the polled nodes' liveness locks"))?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
