//! The Coordinator (DESIGN.md §3/§4): on every node, one per group it serves; active on one node.
//!
//! On its own dedicated connection (never the pool: the lock is session-scoped) it waits for the
//! group's advisory lock `(NS_GROUP, group_id)` — a blocking wait, so a follower sends nothing
//! while the coordinator lives and wins the moment the coordinator's session ends. The wait is cut
//! every `heartbeat_timeout / 2` to check whether the lock's holder is hung (its heartbeat older
//! than `heartbeat_timeout`); then its sessions are terminated. The winner starts a new term
//! (`long_task.become_coordinator`) and runs `long_task.coordinate` every `coordinator_interval`:
//! dead nodes (liveness lock free, or heartbeat stale: sessions terminated first) have their
//! tasks handed back, every write under the term. The Scheduler fires schedules only under it.
//!
//! Steps down at once when its connection fails, a round fails or times out, the term is
//! superseded, or the node's own heartbeat is late (`NodeContext::may_coordinate`). Must never
//! act without a term, and never on a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::backoff;
use super::scheduler::SchedulerMsg;
use crate::db::{self, cluster, DbError};
use crate::node::NodeContext;

/// Messages of the Coordinator.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum CoordinatorMsg {
    /// Step down and stop (node shutdown).
    Stop,
}

#[derive(Debug, thiserror::Error)]
enum CoordinatorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

pub struct Coordinator {
    node: Arc<NodeContext>,
}

impl Coordinator {
    pub fn new(node: Arc<NodeContext>) -> Self {
        Coordinator { node }
    }
}

/// Publishes the node's term (None: not the coordinator) to the node and its Scheduler.
fn set_term(node: &NodeContext, term: Option<i64>) {
    let changed = {
        let mut standing = node.standing();
        std::mem::replace(&mut standing.term, term) != term
    };
    if changed {
        if let Some(s) = node.scheduler() {
            s.do_send(SchedulerMsg::Term(term));
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, CoordinatorError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CoordinatorError::Timeout(what)),
    }
}

/// Runs for coordinator forever: each pass waits for the lock, leads while it can, steps down.
async fn run(node: Arc<NodeContext>) {
    let mut failures = 0u32;
    loop {
        let result = campaign(&node).await;
        set_term(&node, None);
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                warn!(error = %e, "coordinator connection failed; stepping down");
            }
        }
        tokio::time::sleep(backoff(failures).max(node.config.coordinator_interval)).await;
    }
}

/// One campaign on one connection; returns when this node steps down (Ok) or the connection fails.
async fn campaign(node: &NodeContext) -> Result<(), CoordinatorError> {
    let cfg = &node.config;
    let group = node.group_id;
    let me = node.worker_id;
    // A node that cannot heartbeat must not run for coordinator.
    while !node.may_coordinate() {
        tokio::time::sleep(cfg.coordinator_interval).await;
    }
    // The server notices a vanished client even while it waits for the lock.
    let client: Client = bounded(
        Duration::from_secs(5),
        "connecting",
        db::connect_dedicated_with(
            &node.database_url,
            &node.session_purpose("coordinator"),
            "-c client_connection_check_interval=500",
        ),
    )
    .await?;
    let wait = (cfg.heartbeat_timeout / 2).max(Duration::from_millis(200));
    // A round that takes longer than this means a dead connection (the work itself is a few ms).
    let round_limit = cfg.heartbeat_timeout;
    loop {
        if !node.may_coordinate() {
            return Ok(());
        }
        let won = bounded(
            wait + Duration::from_secs(5),
            "waiting for the coordinator lock",
            cluster::wait_group_lock(&client, group, wait),
        )
        .await?;
        if won {
            break;
        }
        let deposed = bounded(
            round_limit,
            "checking the coordinator",
            cluster::depose_stale_coordinator(&client, group, me, cfg.heartbeat_timeout),
        )
        .await?;
        if let Some(worker) = deposed {
            warn!(
                coordinator = worker,
                "the coordinator's heartbeat is stale: its sessions were terminated"
            );
        }
    }
    if !node.may_coordinate() {
        return Ok(()); // won the lock while our own heartbeat went late: give it up
    }
    let term = bounded(
        round_limit,
        "starting a term",
        cluster::become_coordinator(&client, group, me),
    )
    .await?;
    info!(
        term,
        group_id = group,
        "this node is the group's coordinator"
    );
    set_term(node, Some(term));

    let mut tick = tokio::time::interval(cfg.coordinator_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.may_coordinate() {
            warn!(term, "own heartbeat is late: stepping down as coordinator");
            return Ok(());
        }
        let actions = bounded(
            round_limit,
            "the coordinator round",
            cluster::coordinate(&client, group, me, term, cfg.heartbeat_timeout),
        )
        .await?;
        for action in actions {
            if action.is_deposed() {
                warn!(term, detail = ?action.detail, "no longer the coordinator");
                return Ok(());
            }
            info!(
                term,
                kind = %action.kind,
                worker_id = ?action.worker_id,
                task_id = ?action.task_id,
                run_id = ?action.run_id,
                detail = ?action.detail,
                "coordinator action"
            );
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let node = self.node.clone();
        ctx.spawn(run(node).into_actor(self));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // the campaign (and its connection, hence the lock) is dropped with the context
        set_term(&self.node, None);
    }
}

impl Handler<CoordinatorMsg> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: CoordinatorMsg, ctx: &mut Self::Context) {
        match msg {
            CoordinatorMsg::Stop => ctx.stop(),
        }
    }
}
