//! Membership: the node's `worker` row and its liveness advisory lock, on a dedicated connection.
//! Every `heartbeat_interval` it stamps `heartbeat_at = now()` (database clock) with the running
//! count and reads back the live settings (`stop`, `max_task_count`), which it hands to the
//! Supervisor and Dispatcher. A change notified on `long_task_worker` is read at once.
//!
//! Each beat also carries the host's load and available memory; while memory is under the
//! configured floor (`min_free_memory`) the Dispatcher is told to claim nothing.
//!
//! On a lost connection it reconnects (within `db::connect_budget`) and takes the lock again; the
//! first heartbeat after the coordinator declared the node dead announces it again (`peer`, in
//! `queries::heartbeat`), so a healed partition is watched at once. It also keeps the node's standing
//! (`NodeContext::standing`): when no heartbeat has succeeded for `heartbeat_timeout` (cut off,
//! or the whole process was stopped) the node fences itself — the Dispatcher kills every running
//! process and claims nothing until a heartbeat succeeds again, and the Coordinator steps down.
//! Must never run on a pooled connection (the lock is session-scoped).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_postgres::Client;
use tracing::{error, info, warn};

use super::dispatcher::DispatcherMsg;
use super::outcomes::OutcomesMsg;
use super::supervisor::SupervisorMsg;
use crate::db::queries::{self, HostReport, WorkerControl};
use crate::db::{self, DbError};
use crate::node::NodeContext;
use crate::resources::{under_floor, Sampler};

/// Messages of Membership.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum MembershipMsg {
    /// The worker row changed: heartbeat now to read it.
    Refresh,
}

pub struct Membership {
    node: Arc<NodeContext>,
    client: Option<Arc<Client>>,
    last: Option<WorkerControl>,
    in_flight: bool,
    again: bool,
    failing_since: Option<std::time::Instant>,
    sampler: Sampler,
    low_memory: bool,
}

impl Membership {
    pub fn new(
        node: Arc<NodeContext>,
        client: Option<Client>,
        control: Option<WorkerControl>,
    ) -> Self {
        Membership {
            node,
            client: client.map(Arc::new),
            last: control,
            in_flight: false,
            again: false,
            failing_since: None,
            sampler: Sampler::new(),
            low_memory: false,
        }
    }

    /// Fences the node when its last successful heartbeat is older than `heartbeat_timeout`.
    fn check_fence(&mut self) {
        let age = self.node.heartbeat_age();
        if age <= self.node.config.heartbeat_timeout {
            return;
        }
        let newly = {
            let mut standing = self.node.standing();
            !std::mem::replace(&mut standing.fenced, true)
        };
        if newly {
            error!(
                since_last_heartbeat = ?age,
                "cut off from the database past heartbeat_timeout: fencing this node (killing its tasks; the coordinator re-runs them)"
            );
            if let Some(d) = self.node.dispatcher() {
                d.do_send(DispatcherMsg::Fence);
            }
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        // First, before any query: after a long stop (SIGSTOP, a frozen VM) the node must fence
        // itself before anything it does can be seen.
        self.check_fence();
        if self.in_flight {
            self.again = true;
            return;
        }
        self.in_flight = true;
        let node = self.node.clone();
        let client = self.client.clone();
        let timeout = node.config.heartbeat_timeout / 2;
        let floor = node.config.min_free_memory;
        let resources = self.sampler.sample();
        let low_memory = under_floor(&resources, floor);
        self.set_low_memory(low_memory, resources.free_memory);
        let host = HostReport {
            resources,
            min_free_memory: floor,
            low_memory,
        };
        let sent = std::time::Instant::now();
        let fut = async move {
            let client = match client {
                Some(c) if !c.is_closed() => c,
                // bounded: a connection accepted but never answered (a half-open partition)
                // would otherwise keep this round, hence every later beat, waiting
                _ => Arc::new(
                    tokio::time::timeout(db::connect_budget(&node.database_url), reconnect(&node))
                        .await
                        .map_err(|_| DbError::Timeout("reconnecting for the heartbeat"))??,
                ),
            };
            let running = i32::try_from(node.running().len()).unwrap_or(i32::MAX);
            let lease = node.config.heartbeat_timeout;
            let control = tokio::time::timeout(
                timeout,
                queries::heartbeat(&client, node.worker_id, running, lease, Some(&host)),
            )
            .await
            .map_err(|_| DbError::Timeout("heartbeat"))??;
            Ok::<_, MembershipError>((client, control))
        };
        let sampled = host.resources;
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            // a finished round, good or bad, is what the service manager's watchdog checks
            act.node.standing().last_round = std::time::Instant::now();
            match result {
                Ok((client, control)) => {
                    if act.failing_since.take().is_some() {
                        info!("heartbeat restored");
                    }
                    let was_fenced = {
                        let mut standing = act.node.standing();
                        standing.last_heartbeat = standing.last_heartbeat.max(sent);
                        std::mem::replace(&mut standing.fenced, false)
                    };
                    if was_fenced {
                        info!("heartbeat restored after fencing: handing back the killed runs");
                        if let Some(d) = act.node.dispatcher() {
                            d.do_send(DispatcherMsg::Unfence);
                        }
                        if let Some(o) = act.node.outcomes() {
                            o.do_send(OutcomesMsg::Retry);
                        }
                    }
                    act.client = Some(client);
                    crate::metrics::heartbeat_ok(Some(&sampled), act.low_memory);
                    act.apply(control);
                }
                Err(e) => {
                    act.client = None;
                    let since = *act
                        .failing_since
                        .get_or_insert_with(std::time::Instant::now);
                    warn!(error = %e, failing_for = ?since.elapsed(), "heartbeat failed");
                    if let MembershipError::LockTaken = e {
                        error!("another live session holds this node's liveness lock");
                    }
                }
            }
            if std::mem::take(&mut act.again) {
                act.beat(ctx);
            }
        }));
    }

    /// Tells the Dispatcher to stop or resume claiming when free memory crosses the floor.
    fn set_low_memory(&mut self, low: bool, free: u64) {
        if low == self.low_memory {
            return;
        }
        self.low_memory = low;
        let floor = self.node.config.min_free_memory;
        if low {
            warn!(
                free_memory = free,
                min_free_memory = floor,
                "free memory under the floor: claiming nothing"
            );
        } else {
            info!(
                free_memory = free,
                min_free_memory = floor,
                "free memory back over the floor: claiming again"
            );
        }
        if let Some(d) = self.node.dispatcher() {
            d.do_send(DispatcherMsg::LowMemory(low));
        }
    }

    fn apply(&mut self, control: WorkerControl) {
        let previous = self.last.replace(control);
        if previous.map(|p| p.max_task_count) != Some(control.max_task_count) {
            if let Some(d) = self.node.dispatcher() {
                d.do_send(DispatcherMsg::SetLimit(
                    u32::try_from(control.max_task_count).unwrap_or(0),
                ));
            }
        }
        if previous.map(|p| p.stop) != Some(control.stop) {
            if let Some(s) = self.node.supervisor() {
                s.do_send(SupervisorMsg::StopCode(control.stop));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum MembershipError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the liveness lock is held by another session")]
    LockTaken,
}

/// A fresh dedicated connection holding this node's liveness lock.
async fn reconnect(node: &NodeContext) -> Result<Client, MembershipError> {
    let client =
        db::connect_dedicated(&node.database_url, &node.session_purpose("membership")).await?;
    if !queries::try_liveness_lock(&client, node.worker_id).await? {
        // Most likely our previous session is not yet gone on the server side; retried next beat.
        return Err(MembershipError::LockTaken);
    }
    info!("membership connection re-established");
    crate::metrics::reconnected("membership");
    Ok(client)
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval: Duration = self.node.config.heartbeat_interval;
        // report the settings read at registration (limit, pause) to the others
        if let Some(control) = self.last.take() {
            self.apply(control);
        }
        ctx.run_interval(interval, |act, ctx| act.beat(ctx));
        ctx.run_interval(interval / 2, |act, _| act.check_fence());
    }
}

impl Handler<MembershipMsg> for Membership {
    type Result = ();

    fn handle(&mut self, msg: MembershipMsg, ctx: &mut Self::Context) {
        match msg {
            MembershipMsg::Refresh => self.beat(ctx),
        }
    }
}
