//! The Scheduler: fires due schedules (`next_start`) of the node's group on time. One call of
//! `long_task.fire_schedules` fires what is due and says when the next one is; the Scheduler then
//! sleeps exactly that long (database clock), or until a `sched` notification says the schedules
//! changed. With no schedule it sends no query at all.
//!
//! It fires only while this node is its group's coordinator (the Coordinator sends the term), and
//! every firing is checked against that term in the database (`long_task.fire_schedules_as`), so
//! a scheduled run fires once across the cluster. Firing also locks each due row (SKIP LOCKED).
//! Must never compute due times from the node's clock.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use crate::db::cluster;
use crate::node::NodeContext;

fn node_term(node: &NodeContext) -> Option<i64> {
    node.standing().term
}

/// Messages of the Scheduler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SchedulerMsg {
    /// Schedules may have changed (a notification, a reconnect): fire what is due, re-arm the timer.
    Reload,
    /// This node became the group's coordinator under this term (Some), or is no longer (None).
    Term(Option<i64>),
}

pub struct Scheduler {
    node: Arc<NodeContext>,
    timer: Option<SpawnHandle>,
    /// The coordinator term under which this node fires; None: it does not fire.
    term: Option<i64>,
    in_flight: bool,
    again: bool,
    failures: u32,
}

/// Never sleep longer than this between checks (a bound on a lost notification's cost).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

impl Scheduler {
    pub fn new(node: Arc<NodeContext>) -> Self {
        let term = node_term(&node);
        Scheduler {
            node,
            timer: None,
            term,
            in_flight: false,
            again: false,
            failures: 0,
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
        let Some(term) = self.term else {
            return; // not the coordinator: another node fires
        };
        self.in_flight = true;
        let node = self.node.clone();
        let fut = async move {
            cluster::fire_schedules_as(&node.pool, node.group_id, node.worker_id, term).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            let delay = match result {
                Ok((None, _)) => {
                    warn!(term, "term superseded: this node no longer fires schedules");
                    if act.term == Some(term) {
                        act.term = None;
                    }
                    None
                }
                Ok((Some(fired), next_due_in)) => {
                    act.failures = 0;
                    if fired > 0 {
                        info!(fired, "schedules fired");
                    }
                    match next_due_in {
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
                    warn!(error = %e, retry_in = ?delay, "firing schedules failed");
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
            SchedulerMsg::Term(term) => {
                if term != self.term {
                    info!(
                        ?term,
                        "schedule firing {}",
                        if term.is_some() {
                            "taken over"
                        } else {
                            "stopped"
                        }
                    );
                }
                self.term = term;
                if term.is_some() {
                    self.fire(ctx);
                } else if let Some(timer) = self.timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
    }
}
