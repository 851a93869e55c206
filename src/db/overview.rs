//! The cluster overview: nodes (liveness, heartbeat age, load, memory), coordinators, queue depth
//! per group, running and recently finished tasks — in one round trip (one statement building a
//! JSON document, read into typed structs). Used by `pgtaskd status`, `GET /cluster`, the status
//! page and the scrape-time gauges of `GET /metrics`.
//!
//! Reads only active task rows plus the most recent finished ones (index `task_recent_finished_idx`), so
//! its cost does not grow with the history. Must never write.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::queries::NS_NODE;
use super::DbError;

/// One node (a `worker` row) as the database sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: i64,
    pub node_name: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i32>,
    pub group_id: i32,
    /// Registered, holding its liveness lock, and its heartbeat lease not expired.
    pub alive: bool,
    /// The row says the node is running (a killed node's row still does until it is recovered).
    pub active: bool,
    pub stop: i16,
    pub task_count: i32,
    pub max_task_count: i32,
    /// Seconds since the last heartbeat (database clock).
    pub heartbeat_age: Option<f64>,
    pub load1: Option<f64>,
    pub free_memory: Option<i64>,
    pub total_memory: Option<i64>,
    pub min_free_memory: i64,
    /// Free memory is under the node's floor: it claims nothing.
    pub low_memory: bool,
    pub version: Option<String>,
    /// The OS user it runs tasks of groups without `run_as` as (`root`: a warning).
    #[serde(default)]
    pub task_user: Option<String>,
}

/// A group's coordinator (`long_task.coordinator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub group_id: i32,
    pub term: i64,
    pub worker_id: Option<i64>,
    pub elected_at: Option<String>,
}

/// A group's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group_id: i32,
    /// Tasks waiting (`AW`).
    pub waiting: i64,
    /// Tasks running (`AE`) or being cancelled (`AC`).
    pub running: i64,
    /// Drafts (`DR`).
    pub drafts: i64,
    /// Tasks with a schedule (`next_start` set).
    pub scheduled: i64,
    /// Seconds the oldest waiting task has waited.
    pub oldest_waiting: Option<f64>,
    /// Live nodes serving the group.
    pub nodes: i64,
    /// No task of the group starts (`group_settings.paused`).
    #[serde(default)]
    pub paused: bool,
}

/// A task in the running or recent lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskBrief {
    pub id: i64,
    pub state_id: String,
    pub group_id: i32,
    pub worker_id: Option<i64>,
    pub command: Option<Vec<String>>,
    pub attempt: i32,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// Seconds run so far (running) or in all (finished).
    pub seconds: Option<f64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The login role that created the task, and the one that last cancelled or re-queued it.
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub changed_by: Option<String>,
}

/// What holds the database's vacuum horizon back the most: the oldest transaction of this
/// database (a session, a prepared transaction) or a replication slot. While it lasts, no
/// dead row of the tables can be removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizonHolder {
    /// `transaction`, `prepared transaction` or `replication slot`.
    pub kind: String,
    pub pid: Option<i32>,
    /// The session's application name, the prepared transaction's gid or the slot's name.
    pub holder: Option<String>,
    pub role: Option<String>,
    /// Seconds since its transaction started (NULL for a slot).
    pub age_seconds: Option<f64>,
    /// Transactions since the xid it holds back.
    pub xid_age: Option<i64>,
    /// The session's state (`idle in transaction`…) or `active`/`inactive` for a slot.
    pub state: Option<String>,
}

impl HorizonHolder {
    /// Whether it holds the horizon long enough to warn: a transaction (or prepared one) older
    /// than `after`, or an inactive replication slot (it holds back until dropped or resumed).
    pub fn worth_a_warning(&self, after: std::time::Duration) -> bool {
        match self.age_seconds {
            Some(age) => age >= after.as_secs_f64(),
            None => self.state.as_deref() == Some("inactive"),
        }
    }

    /// One line for people: what, who, how long.
    pub fn describe(&self) -> String {
        let who = match (&self.holder, self.pid) {
            (Some(h), Some(pid)) if !h.is_empty() => format!("{h:?} (pid {pid})"),
            (_, Some(pid)) => format!("pid {pid}"),
            (Some(h), None) => format!("{h:?}"),
            (None, None) => "?".to_owned(),
        };
        let how_long = match (self.age_seconds, self.xid_age) {
            (Some(age), _) => format!("for {}", crate::humanize::human_secs(age)),
            (None, Some(xids)) => format!("{xids} transactions behind"),
            (None, None) => String::new(),
        };
        format!(
            "{} {who} has held the vacuum horizon back {how_long}{}: dead rows cannot be removed meanwhile",
            self.kind,
            self.state
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        )
    }
}

/// A table of the hot path: its dead rows and size (with indexes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    pub table: String,
    pub dead_tuples: i64,
    pub live_tuples: i64,
    pub bytes: i64,
}

/// The whole picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterOverview {
    /// The database's clock when this was read.
    pub now: String,
    pub nodes: Vec<NodeInfo>,
    pub coordinators: Vec<CoordinatorInfo>,
    pub groups: Vec<GroupInfo>,
    pub running: Vec<TaskBrief>,
    pub recent: Vec<TaskBrief>,
    /// What holds the vacuum horizon back the most (None: nothing does).
    pub horizon: Option<HorizonHolder>,
    /// The tables of the hot path (the ready ring's slots summed as `ready`).
    pub tables: Vec<TableInfo>,
    /// Every group and rate limit, and the per-key limits configured for one key
    /// (`long_task.limits`; keys under a default or a pattern are left out: unbounded).
    #[serde(default)]
    pub limits: Vec<LimitInfo>,
}

/// A concurrency or rate limit with its usage (a row of `long_task.limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitInfo {
    pub group_id: i32,
    /// `group` (max_running), `key` (a key's limit) or `rate` (starts per interval).
    pub kind: String,
    pub key: Option<String>,
    /// The limit: tasks at once, or starts per interval for `rate`.
    pub max_running: i32,
    /// Running now (None for `rate`).
    pub running: Option<i64>,
    /// Entries waiting on the ready ring.
    pub waiting: i64,
    /// Tokens in the bucket now (`rate` only).
    pub tokens_left: Option<f64>,
}

impl ClusterOverview {
    /// What an operator should look at now: a vacuum horizon held back longer than
    /// `horizon_after`.
    pub fn warnings(&self, horizon_after: std::time::Duration) -> Vec<String> {
        let horizon = self
            .horizon
            .iter()
            .filter(|h| h.worth_a_warning(horizon_after))
            .map(HorizonHolder::describe);
        let root = self
            .live_nodes()
            .filter(|n| n.task_user.as_deref() == Some("root"))
            .map(|n| {
                format!(
                    "node {} ({}) runs tasks as root: it has no run_as (docs/security.md)",
                    n.id,
                    n.node_name.as_deref().unwrap_or("unnamed")
                )
            });
        horizon.chain(root).collect()
    }

    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.alive)
    }
}

/// Errors of reading the overview.
#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the cluster overview has an unexpected shape: {0}")]
    Shape(#[from] serde_json::Error),
}

const OVERVIEW_SQL: &str = "
WITH nodes AS (
    SELECT w.*,
           w.active AND coalesce(w.locked_until > now(), false) AND EXISTS (
               SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.mode = 'ExclusiveLock'
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid = $1::int::oid AND l.objid = w.id::int::oid) AS alive,
           -- counted now, not as of the last heartbeat
           (SELECT count(*) FROM long_task.task t
             WHERE t.worker_id = w.id AND t.state_id IN ('AE', 'AC'))::integer AS running_now
      FROM long_task.worker w
     WHERE w.id <= 2147483647
), per_group AS (
    -- one pass over the active rows (and schedules, which may sit on final rows)
    SELECT t.group_id,
           count(*) FILTER (WHERE t.state_id = 'AW') AS waiting,
           count(*) FILTER (WHERE t.state_id IN ('AE', 'AC')) AS running,
           count(*) FILTER (WHERE t.state_id = 'DR') AS drafts,
           count(*) FILTER (WHERE t.next_start IS NOT NULL) AS scheduled,
           min(t.last_state_change) FILTER (WHERE t.state_id = 'AW') AS oldest
      FROM long_task.task t
     WHERE t.state_id IN ('AW', 'AE', 'AC', 'DR') OR t.next_start IS NOT NULL
     GROUP BY t.group_id
), live_per_group AS (
    SELECT n.group_id, count(*) AS nodes FROM nodes n WHERE n.alive GROUP BY n.group_id
), paused AS (
    SELECT s.group_id FROM long_task.group_settings s WHERE s.paused
), groups AS (
    SELECT coalesce(p.group_id, l.group_id, z.group_id) AS group_id,
           coalesce(p.waiting, 0) AS waiting, coalesce(p.running, 0) AS running,
           coalesce(p.drafts, 0) AS drafts, coalesce(p.scheduled, 0) AS scheduled,
           extract(epoch FROM now() - p.oldest)::float8 AS oldest_waiting,
           coalesce(l.nodes, 0) AS nodes,
           z.group_id IS NOT NULL AS paused
      FROM per_group p FULL JOIN live_per_group l ON l.group_id = p.group_id
      FULL JOIN paused z ON z.group_id = coalesce(p.group_id, l.group_id)
), running AS (
    SELECT t.id, t.state_id, t.group_id, t.worker_id, t.command, t.attempt, t.started, t.finished,
           extract(epoch FROM now() - t.started)::float8 AS seconds, t.exit_code, t.error,
           t.created_by, t.changed_by
      FROM long_task.task t WHERE t.state_id IN ('AE', 'AC')
     ORDER BY t.started, t.id LIMIT $2
), recent AS (
    SELECT t.id, t.state_id, t.group_id, t.worker_id, t.command, t.attempt, t.started, t.finished,
           extract(epoch FROM t.finished - t.started)::float8 AS seconds, t.exit_code, t.error,
           t.created_by, t.changed_by
      FROM long_task.task t WHERE t.finished IS NOT NULL AND t.state_id IN ('CS', 'CF', 'CC')
     ORDER BY t.finished DESC LIMIT $3
)
, horizon AS (
    SELECT * FROM (
        SELECT 'transaction' AS kind, a.pid, a.application_name AS holder, a.usename::text AS role,
               extract(epoch FROM now() - a.xact_start)::float8 AS age_seconds,
               age(coalesce(a.backend_xid, a.backend_xmin))::bigint AS xid_age, a.state
          FROM pg_stat_activity a
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
           AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
        UNION ALL
        SELECT 'prepared transaction', NULL, p.gid, p.owner::text,
               extract(epoch FROM now() - p.prepared)::float8, age(p.transaction)::bigint, NULL
          FROM pg_prepared_xacts p WHERE p.database = current_database()
        UNION ALL
        SELECT 'replication slot', s.active_pid, s.slot_name::text, NULL, NULL,
               greatest(age(s.xmin), age(s.catalog_xmin))::bigint,
               CASE WHEN s.active THEN 'active' ELSE 'inactive' END
          FROM pg_replication_slots s
         WHERE (s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL)
           AND (s.database IS NULL OR s.database = current_database())
    ) h
    ORDER BY h.xid_age DESC NULLS LAST
    LIMIT 1
), tables AS (
    SELECT CASE WHEN c.relname ~ '^ready_[0-9]+$' THEN 'ready' ELSE c.relname::text END AS tbl,
           sum(coalesce(s.n_dead_tup, 0))::bigint AS dead, sum(coalesce(s.n_live_tup, 0))::bigint AS live,
           sum(pg_total_relation_size(c.oid))::bigint AS bytes
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
     WHERE n.nspname = 'long_task' AND c.relkind = 'r'
       AND (c.relname IN ('task', 'task_run', 'event') OR c.relname ~ '^ready_[0-9]+$')
     GROUP BY 1
)
SELECT jsonb_build_object(
    'now', now(),
    'horizon', (SELECT to_jsonb(h) FROM horizon h),
    'tables', coalesce((SELECT jsonb_agg(jsonb_build_object('table', t.tbl, 'dead_tuples', t.dead,
                                                           'live_tuples', t.live, 'bytes', t.bytes)
                                         ORDER BY t.tbl) FROM tables t), '[]'::jsonb),
    'nodes', coalesce((SELECT jsonb_agg(jsonb_build_object(
        'id', n.id, 'node_name', n.node_name, 'host', n.host, 'pid', n.pid, 'group_id', n.group_id,
        'alive', n.alive, 'active', n.active, 'stop', n.stop, 'task_count', n.running_now,
        'max_task_count', n.max_task_count,
        'heartbeat_age', extract(epoch FROM now() - n.heartbeat_at)::float8,
        'load1', n.load1, 'free_memory', n.free_memory, 'total_memory', n.total_memory,
        'min_free_memory', n.min_free_memory, 'low_memory', n.low_memory, 'version', n.version,
        'task_user', n.task_user)
        ORDER BY n.group_id, n.id) FROM nodes n), '[]'::jsonb),
    'coordinators', coalesce((SELECT jsonb_agg(to_jsonb(c) ORDER BY c.group_id)
        FROM (SELECT group_id, term, worker_id, elected_at::text FROM long_task.coordinator) c), '[]'::jsonb),
    'groups', coalesce((SELECT jsonb_agg(to_jsonb(g) ORDER BY g.group_id) FROM groups g), '[]'::jsonb),
    'running', coalesce((SELECT jsonb_agg(to_jsonb(r) ORDER BY r.started, r.id) FROM running r), '[]'::jsonb),
    'recent', coalesce((SELECT jsonb_agg(to_jsonb(r) ORDER BY r.finished DESC) FROM recent r), '[]'::jsonb),
    'limits', coalesce((SELECT jsonb_agg(to_jsonb(l) ORDER BY l.group_id, l.kind, l.key) FROM long_task.limits l
                         WHERE l.kind <> 'key' OR EXISTS (
                               SELECT 1 FROM long_task.key_limit k
                                WHERE k.group_id = l.group_id AND k.key_pattern = l.key)), '[]'::jsonb)
)";

/// Reads the overview: at most `running_limit` running and `recent_limit` finished tasks.
pub async fn cluster_overview(
    client: &Client,
    running_limit: i64,
    recent_limit: i64,
) -> Result<ClusterOverview, OverviewError> {
    let row = client
        .query_one(OVERVIEW_SQL, &[&NS_NODE, &running_limit, &recent_limit])
        .await
        .map_err(DbError::query("reading the cluster overview"))?;
    let value: serde_json::Value = row.get(0);
    Ok(serde_json::from_value(value)?)
}
