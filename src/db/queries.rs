//! Every statement a node sends, with typed inputs and outputs. The heavy lifting lives in SQL
//! functions of the schema (one round trip each); this module only calls them.
//!
//! Must never hold a pooled connection longer than one statement.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use super::codes::GroupEvent;
pub use super::codes::{group_channel, TaskState, Verdict, NS_NODE, WORKER_CHANNEL};
pub use super::outcomes::{finish_runs, finish_runs_on, record_output, LiveOutput, RunOutcome};
use super::{DbError, Pool};

/// A task a node claimed: what it needs to run it (a process, or an in-process handler when it has
/// a topic the node handles).
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: i64,
    pub run_id: Uuid,
    pub command: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub timeout_secs: Option<f64>,
    pub attempt: i32,
    /// How long the task had been waiting when it was claimed (database clock, seconds).
    pub waited_secs: Option<f64>,
    pub topic: Option<String>,
    pub params: Option<serde_json::Value>,
    pub max_attempts: i32,
    /// How the database asks for the process to be started (the node bounds each part).
    pub start: StartRequest,
}

/// The database's side of how a task's process starts: the task's own environment, its group's
/// `run_as`, and the resource limits of the task, else of its group (migration 11).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartRequest {
    pub env: Option<serde_json::Value>,
    pub run_as: Option<String>,
    pub limits: crate::process::identity::TaskLimits,
}

/// Live settings of this node's `worker` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerControl {
    pub stop: i16,
    pub max_task_count: i32,
}

/// Runs one of the node's statements on a pooled connection, prepared once per connection
/// (`pool::Connection::query_prepared`): after the first call, one round trip with nothing for
/// the server to parse or plan.
pub(super) async fn query(
    pool: &Pool,
    context: &'static str,
    sql: &'static str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, DbError> {
    let conn = pool.get().await?;
    conn.query_prepared(sql, params)
        .await
        .map_err(DbError::query(context))
}

/// Claims up to `n` runnable tasks of `group_id` for this node (priority, then FIFO): process
/// tasks when `commands`, and topic tasks whose topic is in `topics` (the node's handlers).
pub async fn claim(
    pool: &Pool,
    worker_id: i64,
    group_id: i32,
    n: i32,
    topics: &[String],
    commands: bool,
) -> Result<Vec<ClaimedTask>, DbError> {
    let rows = query(
        pool,
        "claiming tasks",
        // The subquery reads the rows as they were when the statement started (its snapshot),
        // so the wait runs from the task's last entry into AW to the claim. A task that became
        // waiting after that snapshot (the claim function sees newer rows) waited ~0 s. A
        // correlated subquery, not a join: the planner cannot know how many rows claim returns
        // and hashed a scan of the whole task table for the join.
        "WITH c AS (SELECT * FROM long_task.claim($1, $2, $3, $4, $5))
         SELECT c.id, c.run_id, c.command::text[], c.cwd::text, c.timeout, c.attempt,
                c.topic, c.params, c.max_attempts,
                c.env, c.run_as, c.limit_memory, c.limit_cpu_seconds, c.limit_open_files,
                c.limit_processes,
                coalesce((SELECT extract(epoch FROM now() - before.last_state_change)::float8
                            FROM long_task.task before
                           WHERE before.id = c.id AND before.state_id = 'AW'), 0)
           FROM c",
        &[
            (&worker_id, Type::INT8),
            (&group_id, Type::INT4),
            (&n, Type::INT4),
            (&topics, Type::TEXT_ARRAY),
            (&commands, Type::BOOL),
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| ClaimedTask {
            id: r.get(0),
            run_id: r.get(1),
            command: r.get(2),
            cwd: r.get(3),
            timeout_secs: r.get(4),
            attempt: r.get(5),
            topic: r.get(6),
            params: r.get(7),
            max_attempts: r.get(8),
            start: StartRequest {
                env: r.get(9),
                run_as: r.get(10),
                limits: crate::process::identity::TaskLimits {
                    memory: positive(r.get(11)),
                    cpu_seconds: positive(r.get(12)),
                    open_files: positive(r.get(13)),
                    processes: positive(r.get(14)),
                },
            },
            waited_secs: r.get(15),
        })
        .collect())
}

/// A limit column (`CHECK (> 0)` in the schema) as the node's type.
fn positive(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

/// Asks what to do with the runs this node has in hand.
pub async fn running_state(
    pool: &Pool,
    worker_id: i64,
    runs: &[(i64, Uuid)],
) -> Result<Vec<(i64, Uuid, Verdict)>, DbError> {
    let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
    let run_ids: Vec<Uuid> = runs.iter().map(|r| r.1).collect();
    let rows = query(
        pool,
        "checking running tasks",
        "SELECT id, run_id, verdict FROM long_task.running_state($1, $2, $3)",
        &[
            (&worker_id, Type::INT8),
            (&ids, Type::INT8_ARRAY),
            (&run_ids, Type::UUID_ARRAY),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let verdict = Verdict::from_code(r.get::<_, &str>(2))
                .ok_or(DbError::Unexpected("an unknown verdict of running_state"))?;
            Ok((r.get(0), r.get(1), verdict))
        })
        .collect()
}

/// What one `long_task.scheduler_tick` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub fired: i32,
    pub expired: i32,
    pub purged: i32,
    pub woken: i32,
    /// The database's time of this tick (the next tick's `since`).
    pub db_now: chrono::DateTime<chrono::Utc>,
    /// Seconds until the next due moment (schedule, retry, lease deadline, retention); None: none.
    pub next_due_in: Option<f64>,
}

/// Everything time-driven of a group in one round trip, under the coordinator's term: fires
/// schedules, expires consumer leases, applies retention, wakes the group when retries came due
/// since `since`. None: the term is not (or no longer) this node's, and nothing happened.
pub async fn scheduler_tick(
    pool: &Pool,
    group_id: i32,
    worker_id: i64,
    term: i64,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Option<Tick>, DbError> {
    let rows = query(
        pool,
        "running the scheduler tick",
        "SELECT fired, expired, purged, woken, db_now, next_due_in
           FROM long_task.scheduler_tick_as($1, $2, $3, $4)",
        &[
            (&group_id, Type::INT4),
            (&worker_id, Type::INT8),
            (&term, Type::INT8),
            (&since, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    let Some(r) = rows.first() else {
        return Err(DbError::Unexpected("the scheduler tick returned no row"));
    };
    let fired: i32 = r.get(0);
    if fired < 0 {
        return Ok(None);
    }
    Ok(Some(Tick {
        fired,
        expired: r.get(1),
        purged: r.get(2),
        woken: r.get(3),
        db_now: r.get(4),
        next_due_in: r.get(5),
    }))
}

/// Turns the ready ring (`long_task.turn_ready`); true while it needs turning again soon.
pub async fn turn_ready(pool: &Pool) -> Result<bool, DbError> {
    let rows = query(
        pool,
        "turning the ready ring",
        "SELECT long_task.turn_ready()",
        &[],
    )
    .await?;
    rows.first()
        .map(|r| r.get(0))
        .ok_or(DbError::Unexpected("turn_ready returned no row"))
}

/// This database's installation id (scopes host-local markers).
pub async fn installation_id(client: &Client) -> Result<Uuid, DbError> {
    let row = client
        .query_one("SELECT id FROM long_task.installation", &[])
        .await
        .map_err(DbError::query("reading the installation id"))?;
    Ok(row.get(0))
}

/// A fresh worker id for a node started without one.
pub async fn allocate_worker_id(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one("SELECT nextval('long_task.worker_id_seq')", &[])
        .await
        .map_err(DbError::query("allocating a worker id"))?;
    Ok(row.get(0))
}

/// Registers (or re-registers) this node in `long_task.worker` and returns its live settings.
/// A restart clears stop codes 2 and 3 (they asked the previous run to exit) and keeps 1 (paused).
pub async fn register_worker(
    client: &Client,
    worker_id: i64,
    group_id: i32,
    max_tasks: i32,
    node_name: &str,
    host: &str,
    task_user: &str,
) -> Result<WorkerControl, DbError> {
    let row = client
        .query_one(
            "INSERT INTO long_task.worker AS w
                 (id, group_id, max_task_count, node_name, host, pid, version, active, started_at, heartbeat_at, stop,
                  task_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, true, now(), now(), 0, $8)
             ON CONFLICT (id) DO UPDATE
                SET group_id = EXCLUDED.group_id, max_task_count = EXCLUDED.max_task_count,
                    node_name = EXCLUDED.node_name, host = EXCLUDED.host, pid = EXCLUDED.pid,
                    version = EXCLUDED.version, active = true, started_at = now(), heartbeat_at = now(),
                    stopped_at = NULL, task_count = 0, task_user = EXCLUDED.task_user,
                    stop = CASE WHEN w.stop = 1 THEN 1 ELSE 0 END
             RETURNING stop, max_task_count",
            &[
                &worker_id,
                &group_id,
                &max_tasks,
                &node_name,
                &host,
                &(std::process::id() as i32),
                &env!("CARGO_PKG_VERSION"),
                &task_user,
            ],
        )
        .await
        .map_err(DbError::query("registering the node"))?;
    announce_peer(client, group_id).await?;
    Ok(WorkerControl {
        stop: row.get(0),
        max_task_count: row.get(1),
    })
}

/// Notifies the group that this node is live (`peer`): its coordinator runs a round at once and
/// starts watching the node's liveness lock and heartbeat deadline.
async fn announce_peer(client: &Client, group_id: i32) -> Result<(), DbError> {
    client
        .query_typed(
            "SELECT pg_notify(long_task.channel($1), $2)",
            &[
                (&group_id, Type::INT4),
                (&GroupEvent::Peer.payload().as_str(), Type::TEXT),
            ],
        )
        .await
        .map_err(DbError::query("announcing the node"))?;
    Ok(())
}

/// Takes this node's liveness lock on its session; false when another live session holds it.
pub async fn try_liveness_lock(client: &Client, worker_id: i64) -> Result<bool, DbError> {
    let key = i32::try_from(worker_id).unwrap_or(i32::MAX);
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&NS_NODE, &key])
        .await
        .map_err(DbError::query("taking the liveness lock"))?;
    Ok(row.get(0))
}

/// What a heartbeat reports about the node's host (migration 4 columns).
#[derive(Debug, Clone, Copy)]
pub struct HostReport {
    pub resources: crate::resources::Resources,
    /// The configured floor (bytes; 0 = none).
    pub min_free_memory: u64,
    /// Free memory is under the floor: the node claims nothing.
    pub low_memory: bool,
}

/// Records a heartbeat (with the host's load and memory when sampled) and reads back the live
/// settings. A heartbeat that makes the row active again (the coordinator had declared the node
/// dead: it was cut off, then the partition healed, with no restart and so no registration)
/// announces the node (`peer`), or a coordinator with no other live node would neither watch it
/// nor time its next heartbeat deadline until its 30 s lone round.
pub async fn heartbeat(
    client: &Client,
    worker_id: i64,
    running: i32,
    lease: std::time::Duration,
    host: Option<&HostReport>,
) -> Result<WorkerControl, DbError> {
    let lease_secs = lease.as_secs_f64();
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let load1 = host.map(|h| h.resources.load1);
    let free = host.map(|h| clamp(h.resources.free_memory));
    let total = host.map(|h| clamp(h.resources.total_memory));
    let floor = host.map(|h| clamp(h.min_free_memory));
    let low = host.map(|h| h.low_memory);
    let row = client
        .query_typed(
            "UPDATE long_task.worker w
                SET heartbeat_at = now(), task_count = $2,
                    locked_until = now() + make_interval(secs => $3), active = true,
                    load1 = coalesce($4, w.load1), free_memory = coalesce($5, w.free_memory),
                    total_memory = coalesce($6, w.total_memory),
                    min_free_memory = coalesce($7, w.min_free_memory),
                    low_memory = coalesce($8, w.low_memory)
               FROM (SELECT id, active FROM long_task.worker WHERE id = $1) prev
              WHERE w.id = $1 AND prev.id = w.id
          RETURNING w.stop, w.max_task_count, NOT prev.active, w.group_id",
            &[
                (&worker_id, Type::INT8),
                (&running, Type::INT4),
                (&lease_secs, Type::FLOAT8),
                (&load1, Type::FLOAT8),
                (&free, Type::INT8),
                (&total, Type::INT8),
                (&floor, Type::INT8),
                (&low, Type::BOOL),
            ],
        )
        .await
        .map_err(DbError::query("sending the heartbeat"))?
        .into_iter()
        .next();
    match row {
        Some(row) => {
            if row.get::<_, bool>(2) {
                announce_peer(client, row.get(3)).await?;
            }
            Ok(WorkerControl {
                stop: row.get(0),
                max_task_count: row.get(1),
            })
        }
        // The row was deleted by an operator: treat as "drain then exit".
        None => Ok(WorkerControl {
            stop: 2,
            max_task_count: 0,
        }),
    }
}

/// Sets the node's process limit (`worker.max_task_count`, what SIGHUP applies from the config
/// file); the row's trigger notifies the node, whose next heartbeat hands it to the Dispatcher.
pub async fn set_max_task_count(
    client: &impl GenericClient,
    worker_id: i64,
    max_task_count: i32,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE long_task.worker SET max_task_count = $2 WHERE id = $1",
            &[&worker_id, &max_task_count],
        )
        .await
        .map_err(DbError::query("changing the node's process limit"))?;
    Ok(())
}

/// Marks the node stopped (the row stays: a restart needs it, and pinned tasks refer to it).
pub async fn mark_stopped(client: &Client, worker_id: i64) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE long_task.worker SET active = false, task_count = 0, stopped_at = now(), locked_until = NULL WHERE id = $1",
            &[&worker_id],
        )
        .await
        .map_err(DbError::query("marking the node stopped"))?;
    Ok(())
}

/// A row that says this node runs a task under a run the node does not have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnknownRun {
    pub id: i64,
    pub run_id: Uuid,
    /// Seconds since the run started, by the database clock.
    pub age_secs: f64,
}

/// Runs the database says this node has (`AE`/`AC` with its worker id) that are not among the
/// `known` (task id, run id) pairs, with their age: after a failover that lost this node's latest
/// commits, rows can claim runs the node ended long ago (or a run older than the one the node
/// has for the same task), and nothing else would ever end them. The caller leaves the young
/// ones alone for a while (a claim may still be on its way to the Dispatcher).
pub async fn unknown_runs(
    pool: &Pool,
    worker_id: i64,
    known: &[(i64, Uuid)],
) -> Result<Vec<UnknownRun>, DbError> {
    let (ids, run_ids): (Vec<i64>, Vec<Uuid>) = known.iter().copied().unzip();
    let rows = query(
        pool,
        "looking for runs this node does not have",
        "SELECT t.id, t.run_id,
                extract(epoch FROM now() - coalesce(t.started, t.last_state_change))::float8
           FROM long_task.task t
          WHERE t.worker_id = $1 AND t.state_id IN ('AE', 'AC') AND t.run_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::uuid[]) AS k(id, run_id)
                             WHERE k.id = t.id AND k.run_id = t.run_id)",
        &[
            (&worker_id, Type::INT8),
            (&ids, Type::INT8_ARRAY),
            (&run_ids, Type::UUID_ARRAY),
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| UnknownRun {
            id: r.get(0),
            run_id: r.get(1),
            age_secs: r.get(2),
        })
        .collect())
}

/// What a hand-back (`long_task.hand_back`) did with a node's abandoned runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandedBack {
    /// Back to the queue (lost re-runs left).
    pub requeued: i64,
    /// Ended CF 'worker lost' (no lost re-run left).
    pub failed: i64,
    /// Cancel requests that ended CC.
    pub cancelled: i64,
}

impl HandedBack {
    pub fn total(&self) -> i64 {
        self.requeued + self.failed + self.cancelled
    }
}

/// Hands back this node's abandoned runs under the one rule of `long_task.hand_back`: the given
/// runs (each only while still AE/AC under its run_id), or every run the node has in the
/// database (`None`: at start-up or shutdown).
pub async fn hand_back(
    client: &impl GenericClient,
    worker_id: i64,
    reason: &str,
    runs: Option<&[(i64, Uuid)]>,
) -> Result<HandedBack, DbError> {
    let ids: Option<Vec<i64>> = runs.map(|r| r.iter().map(|(id, _)| *id).collect());
    let run_ids: Option<Vec<Uuid>> = runs.map(|r| r.iter().map(|(_, run)| *run).collect());
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE kind = 'requeued'),
                    count(*) FILTER (WHERE kind = 'lost_failed'),
                    count(*) FILTER (WHERE kind = 'lost_cancelled')
               FROM long_task.hand_back($1, $2, $1, $3, $4)",
            &[&worker_id, &reason, &ids, &run_ids],
        )
        .await
        .map_err(DbError::query("handing back the node's runs"))?;
    Ok(HandedBack {
        requeued: row.get(0),
        failed: row.get(1),
        cancelled: row.get(2),
    })
}
