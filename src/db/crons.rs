//! The statements of cron schedules (`shed_cron`): reading a group's due cron rows, and firing
//! and moving them as the Scheduler computed (`crate::cron`), each only if still as read
//! (`long_task.due_crons`, `long_task.fire_crons`). One statement each, one pooled connection
//! each; never a transaction held across the computation in between.

use tokio_postgres::types::Type;

use super::queries::query;
use super::{DbError, Pool};

/// A cron row whose `next_start` has come (`long_task.due_crons`), as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCron {
    pub id: i64,
    pub next_start: chrono::DateTime<chrono::Utc>,
    pub shed_cron: String,
    pub shed_timezone: Option<String>,
}

/// What the Scheduler decided for one due cron row (`long_task.fire_crons`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronFiring {
    pub due: DueCron,
    /// The slot to fire for; None: none came yet.
    pub slot: Option<chrono::DateTime<chrono::Utc>>,
    /// Its next `next_start` (None with a refusal).
    pub next: Option<chrono::DateTime<chrono::Utc>>,
    /// Why its expression or zone cannot be evaluated: recorded, and its `next_start` cleared.
    pub refusal: Option<String>,
}

/// The group's due cron rows (at most 1,000, earliest first) and the database's time. Reads only.
pub async fn due_crons(
    pool: &Pool,
    group_id: i32,
) -> Result<(Vec<DueCron>, Option<chrono::DateTime<chrono::Utc>>), DbError> {
    let rows = query(
        pool,
        "reading due cron schedules",
        "SELECT id, next_start, shed_cron, shed_timezone, db_now FROM long_task.due_crons($1)",
        &[(&group_id, Type::INT4)],
    )
    .await?;
    let now = rows.first().map(|r| r.get(4));
    let due = rows
        .iter()
        .map(|r| DueCron {
            id: r.get(0),
            next_start: r.get(1),
            shed_cron: r.get(2),
            shed_timezone: r.get(3),
        })
        .collect();
    Ok((due, now))
}

/// Fires and moves due cron rows in one transaction under the coordinator's term, each only if it
/// is still as read (`long_task.fire_crons`). Returns the number fired; None: the term is not (or
/// no longer) this node's, and nothing happened.
pub async fn fire_crons(
    pool: &Pool,
    group_id: i32,
    worker_id: i64,
    term: i64,
    firings: &[CronFiring],
) -> Result<Option<i32>, DbError> {
    let ids: Vec<i64> = firings.iter().map(|f| f.due.id).collect();
    let planned: Vec<chrono::DateTime<chrono::Utc>> =
        firings.iter().map(|f| f.due.next_start).collect();
    let crons: Vec<&str> = firings.iter().map(|f| f.due.shed_cron.as_str()).collect();
    let zones: Vec<Option<&str>> = firings
        .iter()
        .map(|f| f.due.shed_timezone.as_deref())
        .collect();
    let slots: Vec<_> = firings.iter().map(|f| f.slot).collect();
    let nexts: Vec<_> = firings.iter().map(|f| f.next).collect();
    let refusals: Vec<Option<&str>> = firings.iter().map(|f| f.refusal.as_deref()).collect();
    let rows = query(
        pool,
        "firing cron schedules",
        "SELECT long_task.fire_crons($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            (&group_id, Type::INT4),
            (&worker_id, Type::INT8),
            (&term, Type::INT8),
            (&ids, Type::INT8_ARRAY),
            (&planned, Type::TIMESTAMPTZ_ARRAY),
            (&crons, Type::TEXT_ARRAY),
            (&zones, Type::TEXT_ARRAY),
            (&slots, Type::TIMESTAMPTZ_ARRAY),
            (&nexts, Type::TIMESTAMPTZ_ARRAY),
            (&refusals, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    let fired: i32 = rows
        .first()
        .map(|r| r.get(0))
        .ok_or(DbError::Unexpected("fire_crons returned no row"))?;
    Ok((fired >= 0).then_some(fired))
}
