//! The Scheduler: everything time-driven of the node's group, on time. One call of
//! `long_task.scheduler_tick` fires due schedules (`next_start`), expires SQL consumers' leases
//! (`lease_until`), applies retention, makes retries and delayed tasks (`run_after`) that came due
//! claimable, turns the ready ring, and says when the next of these is due; the Scheduler then
//! sleeps exactly that long (database clock), or until a `sched` notification says a schedule or
//! a retry delay changed. Lease deadlines come as `lease <ms>` notifications (the database would
//! otherwise have to find the earliest one among every consumed task's index entry): the
//! Scheduler keeps them, and the next due moment each full pass reports (a lease whose
//! notification came before this node listened), and ticks when the earliest passes; a tick in
//! between, which reports no lease, does not make it forget one. With nothing due it sends no
//! query at all. Notifications are coalesced: a tick at most every `NOTIFIED_TICK_SPACING`
//! covers them all (a tick due at a deadline is never held back).
//!
//! Cron schedules (`shed_cron`) are fired here first: PostgreSQL cannot compute cron times, so the
//! tick reads the due cron rows (`long_task.due_crons`), computes each one's firing and next time
//! (`crate::cron`), and `long_task.fire_crons` fires and moves them in one transaction, each only
//! if it is still as read (so a slot fires once even when the coordinator dies in between).
//!
//! A tick looks only at what came due since the previous one (`since`); the first tick of a term,
//! one after a listener resync, and one every `FULL_PASS_EVERY` look at everything.
//!
//! It ticks only while this node is its group's coordinator (the Coordinator sends the term), and
//! every tick is checked against that term in the database (`long_task.scheduler_tick_as`), so a
//! scheduled run fires once across the cluster. Each step also locks its rows (SKIP LOCKED).
//! Must never compute due times from the node's clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use crate::cron::{self, CronSchedule, Step};
use crate::db::{crons, queries};
use crate::node::NodeContext;

fn node_term(node: &NodeContext) -> Option<i64> {
    node.standing().term
}

/// Messages of the Scheduler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SchedulerMsg {
    /// Schedules may have changed (a notification): fire what is due, re-arm the timer.
    Reload,
    /// Notifications may have been lost (a listener reconnect): the next tick is a full pass.
    Resync,
    /// A consumer lease ends at this time (milliseconds since the epoch, database clock).
    LeaseDue(i64),
    /// Tasks became claimable (a `wake`): they have entries on the ready ring, which the
    /// coordinator turns within `RING_TURN`.
    RingFilled,
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
    /// The database time of the last tick (what came due after it is handled by the next one);
    /// None: the next tick is a full pass.
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last full pass started.
    last_full: Option<Instant>,
    /// The database clock at the last tick (ms since the epoch) and when that was here.
    db_clock: Option<(i64, Instant)>,
    /// Moments a tick must run at (ms since the epoch, database clock), at most `MAX_DEADLINES`:
    /// lease deadlines from `lease` notifications, and the next due moment a full pass reported
    /// (an incremental tick reports no lease deadline, so a lease whose notification was lost,
    /// one that came before this node listened, is known only from that report).
    deadlines: BTreeSet<i64>,
    /// A full pass was asked for (a new term, a listener resync): the next tick to start is one,
    /// even when a tick in flight when it was asked for (begun before) ends after.
    full_pass_due: bool,
    /// The next turn of the ready ring is armed or under way.
    ring_pending: bool,
}

/// Never sleep longer than this between checks (a bound on a lost notification's cost).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The least time from one tick to a tick asked for by a notification.
const NOTIFIED_TICK_SPACING: Duration = Duration::from_millis(100);

/// How soon after tasks became claimable the coordinator turns the ready ring (and again after
/// each tick while the ring is active: the tick says so with its next due time).
const RING_TURN: Duration = Duration::from_millis(250);

/// A tick this often looks at everything, not only what came due since the previous one (it
/// catches a lease or retry that became visible late, after its window had passed).
const FULL_PASS_EVERY: Duration = Duration::from_secs(300);

/// Deadlines kept at most (leases arrive rounded to 100 ms: ten minutes of leases); past it the
/// latest are dropped and the next full pass finds them.
const MAX_DEADLINES: usize = 6000;

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
            last_full: None,
            db_clock: None,
            deadlines: BTreeSet::new(),
            full_pass_due: true,
            ring_pending: false,
        }
    }

    /// Turns the ready ring in `RING_TURN`, unless a turn is pending; then again every
    /// `RING_TURN` while the database says the ring is active. Only the coordinator turns it.
    fn arm_ring(&mut self, ctx: &mut Context<Self>) {
        if self.term.is_none() || self.ring_pending {
            return;
        }
        self.ring_pending = true;
        ctx.run_later(RING_TURN, |act, ctx| act.turn_ring(ctx));
    }

    fn turn_ring(&mut self, ctx: &mut Context<Self>) {
        if self.term.is_none() {
            self.ring_pending = false;
            return;
        }
        let node = self.node.clone();
        let fut = async move { queries::turn_ready(&node.pool).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            let again = match result {
                Ok(active) => active.then_some(RING_TURN),
                Err(e) => {
                    warn!(error = %e, "turning the ready ring failed");
                    Some(backoff(2))
                }
            };
            match again {
                Some(delay) if act.term.is_some() => {
                    ctx.run_later(delay, |act, ctx| act.turn_ring(ctx));
                }
                _ => act.ring_pending = false,
            }
        }));
    }

    /// The database clock now, as far as this node can tell (ms since the epoch).
    fn db_now_ms(&self) -> Option<i64> {
        self.db_clock
            .map(|(ms, at)| ms + i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// How long until the earliest deadline kept (zero when it passed).
    fn next_deadline_in(&self) -> Option<Duration> {
        let due = *self.deadlines.first()?;
        let now = self.db_now_ms()?;
        Some(Duration::from_millis(u64::try_from(due - now).unwrap_or(0)))
    }

    /// Keeps a deadline, unless `MAX_DEADLINES` later ones are kept already.
    fn keep_deadline(&mut self, due_ms: i64) {
        if self.deadlines.len() >= MAX_DEADLINES {
            match self.deadlines.last() {
                Some(&latest) if latest > due_ms => {
                    self.deadlines.remove(&latest);
                }
                _ => return,
            }
        }
        self.deadlines.insert(due_ms);
    }

    fn lease_due(&mut self, due_ms: i64, ctx: &mut Context<Self>) {
        if self.term.is_none() {
            return;
        }
        self.keep_deadline(due_ms);
        match self.next_deadline_in() {
            // before the first tick: the tick will know the clock
            None => self.reload(ctx),
            Some(delay) => {
                let due = Instant::now() + delay;
                if self.in_flight || self.timer_due.is_some_and(|t| t <= due) {
                    return; // an earlier tick is coming; it re-arms for this deadline
                }
                if delay.is_zero() {
                    self.reload(ctx);
                } else {
                    self.arm(ctx, delay + Duration::from_millis(5));
                }
            }
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
        if std::mem::take(&mut self.full_pass_due)
            || self
                .last_full
                .is_none_or(|at| at.elapsed() >= FULL_PASS_EVERY)
        {
            self.since = None;
        }
        if self.since.is_none() {
            self.last_full = Some(Instant::now());
        }
        let since = self.since;
        let full = since.is_none();
        let fut = async move {
            // cron rows first: the tick's next due time then counts where they moved to
            let Some(crons) = fire_due_crons(&node, term).await? else {
                return Ok(None);
            };
            let tick =
                queries::scheduler_tick(&node.pool, node.group_id, node.worker_id, term, since)
                    .await?;
            Ok::<_, crate::db::DbError>(tick.map(|t| queries::Tick {
                fired: t.fired + crons,
                ..t
            }))
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
                    let db_ms = tick.db_now.timestamp_millis();
                    act.db_clock = Some((db_ms, Instant::now()));
                    // the tick expired every lease that had passed by its time
                    act.deadlines = act.deadlines.split_off(&(db_ms + 1));
                    // a full pass's next due moment may be a lease no notification announced:
                    // kept, so a tick in between (which reports no lease) does not forget it
                    if let Some(secs) = tick.next_due_in.filter(|s| full && *s > 0.0) {
                        let ms = (secs.min(MAX_SLEEP.as_secs_f64()) * 1000.0).ceil() as i64;
                        act.keep_deadline(db_ms + ms);
                    }
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
                    let next = match tick.next_due_in {
                        // A full batch may leave more due: go again at once.
                        Some(secs) if secs <= 0.0 => Some(Duration::ZERO),
                        Some(secs) => {
                            Some(Duration::from_secs_f64(secs.min(MAX_SLEEP.as_secs_f64())))
                        }
                        None => None,
                    };
                    match (next, act.next_deadline_in()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
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

/// Fires the group's due cron rows: reads them, computes each one's firing here (PostgreSQL
/// cannot evaluate cron), and has `long_task.fire_crons` fire and move each in one transaction,
/// only if it is still as read. A coordinator that dies between the two statements changed
/// nothing. Returns the number fired; None: the term is no longer this node's.
async fn fire_due_crons(node: &NodeContext, term: i64) -> Result<Option<i32>, crate::db::DbError> {
    let (due, db_now) = crons::due_crons(&node.pool, node.group_id).await?;
    let Some(now) = db_now else {
        return Ok(Some(0));
    };
    let firings: Vec<crons::CronFiring> = due.into_iter().map(|d| plan_firing(d, now)).collect();
    crons::fire_crons(&node.pool, node.group_id, node.worker_id, term, &firings).await
}

/// What one due cron row does at the database time `now` (`cron::step`); an expression or zone
/// the parser refuses becomes a refusal (recorded as an event, the row's `next_start` cleared:
/// it never comes due again until someone fixes it).
fn plan_firing(due: crons::DueCron, now: chrono::DateTime<chrono::Utc>) -> crons::CronFiring {
    let step = CronSchedule::parse(&due.shed_cron, due.shed_timezone.as_deref())
        .and_then(|schedule| cron::step(&schedule, due.next_start, now));
    let (slot, next, refusal) = match step {
        Ok(Step::Fire { slot, next }) => (Some(slot), Some(next), None),
        Ok(Step::Wait { next }) => (None, Some(next), None),
        Err(e) => {
            warn!(task_id = due.id, error = %e, "cron schedule refused; its next_start is cleared");
            (None, None, Some(e.to_string()))
        }
    };
    crons::CronFiring {
        due,
        slot,
        next,
        refusal,
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
            SchedulerMsg::Resync => {
                self.full_pass_due = true;
                self.reload(ctx);
            }
            SchedulerMsg::LeaseDue(due_ms) => self.lease_due(due_ms, ctx),
            SchedulerMsg::RingFilled => self.arm_ring(ctx),
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
                // a new term starts with a full pass: deadlines announced before are not known
                self.full_pass_due = true;
                self.deadlines.clear();
                if term.is_some() {
                    self.fire(ctx);
                    self.arm_ring(ctx);
                } else {
                    self.disarm(ctx);
                }
            }
        }
    }
}
