//! The Scheduler: everything time-driven of the node's group, on time. One call of
//! `long_task.scheduler_tick` fires due schedules (`next_start`), expires SQL consumers' leases
//! (`lease_until`), applies retention, wakes the group when retries (`run_after`) came due, and
//! says when the next of these is due; the Scheduler then sleeps exactly that long (database
//! clock), or until a `sched` notification says a schedule, a retry delay or a lease changed.
//! With nothing due it sends no query at all.
//!
//! Each step locks its rows (SKIP LOCKED), so it happens once even when several nodes of a group
//! tick at the same moment. Must never compute due times from the node's clock.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use crate::db::queries;
use crate::node::NodeContext;

/// Messages of the Scheduler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SchedulerMsg {
    /// Schedules may have changed (a notification, a reconnect): fire what is due, re-arm the timer.
    Reload,
}

pub struct Scheduler {
    node: Arc<NodeContext>,
    timer: Option<SpawnHandle>,
    in_flight: bool,
    again: bool,
    failures: u32,
    /// The database time of the last tick (retries due after it are woken by the next one).
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Never sleep longer than this between checks (a bound on a lost notification's cost).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

impl Scheduler {
    pub fn new(node: Arc<NodeContext>) -> Self {
        Scheduler {
            node,
            timer: None,
            in_flight: false,
            again: false,
            failures: 0,
            since: None,
        }
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            self.again = true;
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.in_flight = true;
        let node = self.node.clone();
        let since = self.since;
        let fut = async move { queries::scheduler_tick(&node.pool, node.group_id, since).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.in_flight = false;
            let delay = match result {
                Ok(tick) => {
                    act.failures = 0;
                    act.since = Some(tick.db_now);
                    if tick.fired > 0 {
                        info!(fired = tick.fired, "schedules fired");
                    }
                    if tick.expired > 0 {
                        info!(expired = tick.expired, "consumer leases expired");
                    }
                    if tick.purged > 0 {
                        debug!(purged = tick.purged, "retention deleted old rows");
                    }
                    if tick.woken > 0 {
                        debug!(due = tick.woken, "retries came due");
                        // our own dispatcher too (the NOTIFY reaches it as well; this is quicker)
                        if let Some(d) = act.node.dispatcher() {
                            d.do_send(crate::actors::dispatcher::DispatcherMsg::Wake);
                        }
                    }
                    match tick.next_due_in {
                        // A full batch may leave more due: go again at once.
                        Some(secs) if secs <= 0.0 => Some(Duration::ZERO),
                        Some(secs) => {
                            Some(Duration::from_secs_f64(secs.min(MAX_SLEEP.as_secs_f64())))
                        }
                        None => None,
                    }
                }
                Err(e) => {
                    act.failures += 1;
                    let delay = backoff(act.failures);
                    warn!(error = %e, retry_in = ?delay, "scheduler tick failed");
                    Some(delay)
                }
            };
            if std::mem::take(&mut act.again) {
                act.fire(ctx);
                return;
            }
            if let Some(delay) = delay {
                debug!(?delay, "next schedule check");
                // a few ms late rather than early: the row must be due by the database's clock
                let delay = delay + Duration::from_millis(5);
                act.timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    act.fire(ctx);
                }));
            }
        }));
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.fire(ctx);
    }
}

impl Handler<SchedulerMsg> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: SchedulerMsg, ctx: &mut Self::Context) {
        match msg {
            SchedulerMsg::Reload => self.fire(ctx),
        }
    }
}
