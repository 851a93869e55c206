//! The Scheduler: everything time-driven of the node's group, on time. One call of
//! `long_task.scheduler_tick` fires due schedules (`next_start`), expires SQL consumers' leases
//! (`lease_until`), applies retention, wakes the group when retries (`run_after`) came due, and
//! says when the next of these is due; the Scheduler then sleeps exactly that long (database
//! clock), or until a `sched` notification says a schedule, a retry delay or a lease changed.
//! With nothing due it sends no query at all. Notifications are coalesced: a busy group's SQL
//! consumers set lease deadlines many times a second, and a tick at most every
//! `NOTIFIED_TICK_SPACING` covers them all (a tick due at a deadline is never held back).
//!
//! It ticks only while this node is its group's coordinator (the Coordinator sends the term), and
//! every tick is checked against that term in the database (`long_task.scheduler_tick_as`), so a
//! scheduled run fires once across the cluster. Each step also locks its rows (SKIP LOCKED).
//! Must never compute due times from the node's clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use crate::db::queries;
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
    /// When the armed timer fires.
    timer_due: Option<Instant>,
    /// When the last tick started.
    last_tick: Option<Instant>,
    /// The coordinator term under which this node fires; None: it does not fire.
    term: Option<i64>,
    in_flight: bool,
    again: bool,
    failures: u32,
    /// The database time of the last tick (retries due after it are woken by the next one).
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Never sleep longer than this between checks (a bound on a lost notification's cost).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The least time from one tick to a tick asked for by a notification.
const NOTIFIED_TICK_SPACING: Duration = Duration::from_millis(100);

impl Scheduler {
    pub fn new(node: Arc<NodeContext>) -> Self {
        let term = node_term(&node);
        Scheduler {
            node,
            timer: None,
            timer_due: None,
            last_tick: None,
            term,
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
        self.disarm(ctx);
        let Some(term) = self.term else {
            return; // not the coordinator: another node fires
        };
        self.in_flight = true;
        self.last_tick = Some(Instant::now());
        crate::metrics::scheduler_tick();
        let node = self.node.clone();
        let since = self.since;
        let fut = async move {
            queries::scheduler_tick(&node.pool, node.group_id, node.worker_id, term, since).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            let delay = match result {
                Ok(None) => {
                    warn!(
                        term,
                        "term superseded: this node no longer runs the scheduler"
                    );
                    if act.term == Some(term) {
                        act.term = None;
                    }
                    None
                }
                Ok(Some(tick)) => {
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
            if let Some(delay) = delay {
                debug!(?delay, "next schedule check");
                // a few ms late rather than early: the row must be due by the database's clock
                act.arm(ctx, delay + Duration::from_millis(5));
            }
            if std::mem::take(&mut act.again) {
                act.reload(ctx);
            }
        }));
    }

    /// A notification (or a reconnect) says timers may have changed: tick now, or when
    /// `NOTIFIED_TICK_SPACING` has passed since the last tick, unless a tick is due sooner.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let hold = self.last_tick.map_or(Duration::ZERO, |last| {
            (last + NOTIFIED_TICK_SPACING).saturating_duration_since(Instant::now())
        });
        if self.in_flight || hold.is_zero() {
            return self.fire(ctx);
        }
        if self
            .timer_due
            .is_some_and(|due| due <= Instant::now() + hold)
        {
            return; // the armed tick comes soon enough and covers this change
        }
        self.arm(ctx, hold);
    }

    /// Ticks after `delay`, instead of when the timer armed before would have.
    fn arm(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        self.disarm(ctx);
        self.timer_due = Some(Instant::now() + delay);
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.timer_due = None;
            act.fire(ctx);
        }));
    }

    fn disarm(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.timer_due = None;
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
            SchedulerMsg::Reload => self.reload(ctx),
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
                } else {
                    self.disarm(ctx);
                }
            }
        }
    }
}
