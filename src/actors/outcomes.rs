//! The Outcomes actor: every write that ends a run on this node. Process actors report each
//! outcome here; it writes them in batches through `long_task.complete_runs` (each guarded by its
//! run_id: a stale run's outcome changes nothing), spools a batch it cannot write to the node's
//! disk (`cluster::spool`) and replays the spool when the database answers again, and hands back
//! the runs a self-fencing node killed and the runs the database says the node has but it does not
//! (`long_task.hand_back`) — never one whose outcome it still holds.
//!
//! The batching and retry rules are `OutcomeQueue`'s (a plain struct with unit tests); the spool
//! replay is `replay_spool`, the one function used at start-up (`node::prepare`) and at runtime.
//! Reacts only to messages and its own retry timers: no polling. Must never block its thread on
//! the database, and never drop an outcome it was given (written, spooled, or kept to retry).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_postgres::GenericClient;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::backoff;
use crate::cluster::Spool;
use crate::db::queries::{self, RunOutcome};
use crate::db::DbError;
use crate::metrics;
use crate::node::NodeContext;

/// At most this many outcomes in one write (a statement of bounded size).
pub const MAX_BATCH: usize = 1000;

/// An outcome waiting to be written, with the run's duration for the metrics.
#[derive(Debug, Clone)]
pub struct Pending {
    pub outcome: RunOutcome,
    pub duration: Option<f64>,
}

/// What to do after a batch could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The batch went to the spool: write what is pending now, replay the spool later.
    Spooled,
    /// The batch is back at the front of the queue: try again after this delay.
    RetryIn(Duration),
}

/// The batching and retry rules of outcome writes, without the database: one batch in flight at a
/// time; a batch is everything pending, oldest first, at most `MAX_BATCH`; a failed batch goes to
/// the spool, or — without a spool — back to the front of the queue, retried with a back-off
/// that grows with consecutive failures.
#[derive(Debug, Default)]
pub struct OutcomeQueue {
    pending: Vec<Pending>,
    in_flight: bool,
    failures: u32,
}

impl OutcomeQueue {
    pub fn push(&mut self, pending: Pending) {
        self.pending.push(pending);
    }

    /// The next batch to write, unless one is in flight or nothing is pending.
    pub fn next_batch(&mut self) -> Option<Vec<Pending>> {
        if self.in_flight || self.pending.is_empty() {
            return None;
        }
        self.in_flight = true;
        let n = self.pending.len().min(MAX_BATCH);
        Some(self.pending.drain(..n).collect())
    }

    /// The batch in flight was written.
    pub fn written(&mut self) {
        self.in_flight = false;
        self.failures = 0;
    }

    /// The batch in flight failed; `spooled` says whether it is safe in the spool.
    pub fn failed(&mut self, batch: Vec<Pending>, spooled: bool) -> AfterFailure {
        self.in_flight = false;
        if spooled {
            return AfterFailure::Spooled;
        }
        self.failures += 1;
        let newer = std::mem::replace(&mut self.pending, batch);
        self.pending.extend(newer);
        AfterFailure::RetryIn(backoff(self.failures))
    }

    /// Whether the outcome of this run waits to be written (the batch in flight not included).
    pub fn holds(&self, run: (i64, Uuid)) -> bool {
        self.pending
            .iter()
            .any(|p| (p.outcome.task_id, p.outcome.run_id) == run)
    }

    /// Nothing pending and nothing in flight.
    pub fn is_idle(&self) -> bool {
        !self.in_flight && self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What one replay of the spool did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub spooled: usize,
    /// Written; the rest were fenced (their task had moved on) and are discarded.
    pub written: usize,
}

/// Errors of a spool replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Spool(#[from] crate::cluster::SpoolError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Writes every spooled outcome (each under its run_id guard) and deletes the files the database
/// answered for. The one replay: at start-up (before the node hands back what its previous run
/// left, so a task whose outcome is known is not run again) and whenever the database answers
/// again.
pub async fn replay_spool(
    client: &impl GenericClient,
    spool: &Spool,
) -> Result<Replayed, ReplayError> {
    let loaded = spool.load()?;
    if loaded.is_empty() {
        return Ok(Replayed::default());
    }
    let (paths, outcomes): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
    let written = queries::finish_runs_on(client, &outcomes).await?;
    spool.remove(&paths);
    Ok(Replayed {
        spooled: outcomes.len(),
        written: written.len(),
    })
}

/// Messages of the Outcomes actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum OutcomesMsg {
    /// A run ended with this outcome (write it).
    Record(Pending),
    /// Hand these runs back (the node fenced itself and killed them, or a claim came back while
    /// it was cut off); run_id-guarded, retried until the database answers.
    Release(Vec<(i64, Uuid)>),
    /// Rows say this node runs these runs, and no Process actor has them (a failover lost their
    /// outcomes): hand back those whose outcome is not waiting here or in the spool (an outcome
    /// on its way ends the row itself). Sent by the Dispatcher after its processes reported.
    HandBackUnknown(Vec<(i64, Uuid)>),
    /// The database may answer again (a reconnect, a restored heartbeat): replay the spool, retry
    /// what waits.
    Retry,
    /// Reply once every outcome received so far is written or spooled.
    Flush(tokio::sync::oneshot::Sender<()>),
}

pub struct Outcomes {
    node: Arc<NodeContext>,
    queue: OutcomeQueue,
    retry_armed: bool,
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Outcomes wait in the spool.
    spool_pending: bool,
    replay_in_flight: bool,
    replay_failures: u32,
    /// Runs to hand back, each with why.
    to_release: Vec<((i64, Uuid), &'static str)>,
    release_in_flight: bool,
    /// The runs of the batch being written.
    writing: Vec<(i64, Uuid)>,
}

impl Outcomes {
    pub fn new(node: Arc<NodeContext>) -> Self {
        // a start-up replay that failed halfway, or outcomes spooled since
        let spool_pending = node.spool.as_ref().is_some_and(|s| !s.is_empty());
        Outcomes {
            node,
            queue: OutcomeQueue::default(),
            retry_armed: false,
            flush_waiters: Vec::new(),
            spool_pending,
            replay_in_flight: false,
            replay_failures: 0,
            to_release: Vec::new(),
            release_in_flight: false,
            writing: Vec::new(),
        }
    }

    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.retry_armed {
            return;
        }
        let Some(batch) = self.queue.next_batch() else {
            if self.queue.is_idle() {
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
            return;
        };
        let node = self.node.clone();
        let outcomes: Vec<RunOutcome> = batch.iter().map(|p| p.outcome.clone()).collect();
        self.writing = outcomes.iter().map(|o| (o.task_id, o.run_id)).collect();
        let fut = async move {
            let write = queries::finish_runs(&node.pool, &outcomes);
            metrics::timed_db_write(metrics::DbWrite::Outcomes, write).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.writing.clear();
            match result {
                Ok(written) => {
                    act.queue.written();
                    act.account(&batch, &written);
                }
                Err(e) => {
                    let spooled = act.spool_batch(&batch);
                    let pending = batch.len() + act.queue.len();
                    match act.queue.failed(batch, spooled) {
                        AfterFailure::Spooled => {
                            warn!(error = %e, pending, "writing outcomes failed; spooled them");
                            act.spool_pending = true;
                            act.schedule_replay(ctx);
                        }
                        AfterFailure::RetryIn(delay) => {
                            warn!(error = %e, pending, retry_in = ?delay, "writing outcomes failed");
                            act.retry_armed = true;
                            ctx.run_later(delay, |act, ctx| {
                                act.retry_armed = false;
                                act.write(ctx);
                            });
                            return;
                        }
                    }
                }
            }
            act.write(ctx);
        }));
    }

    /// Metrics and log lines for a written batch: each outcome took effect, or was fenced.
    fn account(&self, batch: &[Pending], written: &[(i64, String)]) {
        for p in batch {
            let o = &p.outcome;
            match written.iter().find(|(id, _)| *id == o.task_id) {
                Some((id, state)) => {
                    metrics::task_finished(self.node.group_id, state, p.duration);
                    debug!(task_id = id, run_id = %o.run_id, state = %state, "outcome written");
                }
                None => {
                    metrics::fenced_write();
                    info!(
                        task_id = o.task_id,
                        run_id = %o.run_id,
                        "outcome discarded: the task no longer belongs to this run (fenced)"
                    );
                }
            }
        }
    }

    /// Writes a batch to the spool; false when there is no spool or it failed (then nothing of the
    /// batch counts as spooled: an outcome spooled twice is replayed once, by its file name).
    fn spool_batch(&self, batch: &[Pending]) -> bool {
        let Some(spool) = &self.node.spool else {
            return false;
        };
        for p in batch {
            if let Err(e) = spool.put(&p.outcome) {
                warn!(error = %e, task_id = p.outcome.task_id, run_id = %p.outcome.run_id, "cannot spool an outcome");
                return false;
            }
        }
        true
    }

    fn schedule_replay(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff(self.replay_failures.max(1));
        ctx.run_later(delay, |act, ctx| act.replay(ctx));
    }

    fn replay(&mut self, ctx: &mut Context<Self>) {
        if self.replay_in_flight || !self.spool_pending {
            return;
        }
        let Some(spool) = self.node.spool.clone() else {
            self.spool_pending = false;
            return;
        };
        self.replay_in_flight = true;
        let node = self.node.clone();
        let fut = async move {
            let conn = node.pool.get().await.map_err(DbError::from)?;
            replay_spool(&**conn, &spool).await
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.replay_in_flight = false;
            match result {
                Ok(r) => {
                    act.replay_failures = 0;
                    act.spool_pending = false;
                    if r.spooled > 0 {
                        info!(
                            spooled = r.spooled,
                            written = r.written,
                            "replayed spooled outcomes (the rest were fenced)"
                        );
                    }
                }
                Err(e) => {
                    act.replay_failures += 1;
                    debug!(error = %e, "spool replay failed; retrying");
                    act.schedule_replay(ctx);
                }
            }
        }));
    }

    /// Whether this actor still holds the outcome of `run` (queued, being written, or spooled):
    /// then that outcome, not a hand-back, ends the row.
    fn holds_outcome(&self, run: (i64, Uuid), spooled: &[(i64, Uuid)]) -> bool {
        self.writing.contains(&run) || spooled.contains(&run) || self.queue.holds(run)
    }

    /// Hands back the runs in `to_release` (only rows still AE/AC under those run_ids change),
    /// one statement per reason, one at a time.
    fn release(&mut self, ctx: &mut Context<Self>) {
        let Some(&(_, reason)) = self.to_release.first() else {
            return;
        };
        if self.release_in_flight {
            return;
        }
        self.release_in_flight = true;
        let (runs, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.to_release)
            .into_iter()
            .partition(|(_, r)| *r == reason);
        self.to_release = rest;
        let runs: Vec<(i64, Uuid)> = runs.into_iter().map(|(run, _)| run).collect();
        let node = self.node.clone();
        let fut = async move {
            let result = async {
                let conn = node.pool.get().await?;
                queries::hand_back(&**conn, node.worker_id, reason, Some(&runs)).await
            }
            .await;
            (runs, result)
        };
        ctx.spawn(fut.into_actor(self).map(move |(runs, result), act, ctx| {
            act.release_in_flight = false;
            match result {
                Ok(handed) => {
                    info!(
                        runs = runs.len(),
                        handed_back = handed.total(),
                        reason,
                        "runs handed back (the rest had moved on)"
                    );
                    act.release(ctx);
                }
                Err(e) => {
                    warn!(error = %e, reason, "cannot hand back runs yet; retrying");
                    act.to_release
                        .extend(runs.into_iter().map(|run| (run, reason)));
                    ctx.run_later(backoff(3), |act, ctx| act.release(ctx));
                }
            }
        }));
    }
}

impl Actor for Outcomes {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.replay(ctx);
    }
}

impl Handler<OutcomesMsg> for Outcomes {
    type Result = ();

    fn handle(&mut self, msg: OutcomesMsg, ctx: &mut Self::Context) {
        match msg {
            OutcomesMsg::Record(pending) => {
                self.queue.push(pending);
                self.write(ctx);
            }
            OutcomesMsg::Release(runs) => {
                self.to_release
                    .extend(runs.into_iter().map(|run| (run, "self-fenced")));
                self.release(ctx);
            }
            OutcomesMsg::HandBackUnknown(runs) => {
                let spooled: Vec<(i64, Uuid)> = match &self.node.spool {
                    Some(spool) => match spool.load() {
                        Ok(entries) => entries.iter().map(|(_, o)| (o.task_id, o.run_id)).collect(),
                        Err(e) => {
                            // not knowing what the spool holds, hand back nothing now
                            warn!(error = %e, "cannot read the spool; not handing back unknown runs");
                            return;
                        }
                    },
                    None => Vec::new(),
                };
                let (held, unknown): (Vec<_>, Vec<_>) = runs
                    .into_iter()
                    .partition(|run| self.holds_outcome(*run, &spooled));
                if !held.is_empty() {
                    debug!(
                        runs = held.len(),
                        "their outcomes are on their way: not handed back"
                    );
                }
                if unknown.is_empty() {
                    return;
                }
                warn!(
                    runs = unknown.len(),
                    task_ids = ?unknown.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                    "the database says this node runs tasks it does not (lost commits?): handing them back"
                );
                self.to_release.extend(
                    unknown
                        .into_iter()
                        .map(|run| (run, "not running on its node")),
                );
                self.release(ctx);
            }
            OutcomesMsg::Retry => {
                self.replay(ctx);
                self.release(ctx);
            }
            OutcomesMsg::Flush(reply) => {
                self.flush_waiters.push(reply);
                self.write(ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(task_id: i64) -> Pending {
        Pending {
            outcome: RunOutcome::success(task_id),
            duration: Some(0.1),
        }
    }

    fn ids(batch: &[Pending]) -> Vec<i64> {
        batch.iter().map(|p| p.outcome.task_id).collect()
    }

    #[test]
    fn one_batch_at_a_time_oldest_first() {
        let mut q = OutcomeQueue::default();
        assert!(q.next_batch().is_none(), "nothing pending");
        q.push(pending(1));
        q.push(pending(2));
        let batch = q.next_batch().expect("a batch");
        assert_eq!(ids(&batch), [1, 2]);
        q.push(pending(3));
        assert!(q.next_batch().is_none(), "one batch in flight at a time");
        assert!(!q.is_idle());
        q.written();
        assert_eq!(ids(&q.next_batch().expect("the next")), [3]);
        q.written();
        assert!(q.is_idle());
    }

    #[test]
    fn a_batch_is_bounded() {
        let mut q = OutcomeQueue::default();
        for i in 0..(MAX_BATCH as i64 + 5) {
            q.push(pending(i));
        }
        assert_eq!(q.next_batch().expect("batch").len(), MAX_BATCH);
        q.written();
        assert_eq!(
            ids(&q.next_batch().expect("rest")),
            (MAX_BATCH as i64..MAX_BATCH as i64 + 5).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_failed_batch_without_a_spool_is_retried_first_with_a_growing_back_off() {
        let mut q = OutcomeQueue::default();
        q.push(pending(1));
        let batch = q.next_batch().expect("batch");
        q.push(pending(2));
        let first = q.failed(batch, false);
        assert_eq!(first, AfterFailure::RetryIn(backoff(1)));
        let batch = q.next_batch().expect("retry");
        assert_eq!(ids(&batch), [1, 2], "the failed outcomes stay oldest first");
        let second = q.failed(batch, false);
        let (AfterFailure::RetryIn(a), AfterFailure::RetryIn(b)) = (first, second) else {
            panic!("retries: {first:?} {second:?}");
        };
        assert!(b > a, "the back-off grows: {a:?} then {b:?}");
        q.next_batch().expect("again");
        q.written();
        q.push(pending(3));
        let batch = q.next_batch().expect("batch");
        assert_eq!(
            q.failed(batch, false),
            AfterFailure::RetryIn(backoff(1)),
            "a success resets the back-off"
        );
    }

    #[test]
    fn the_queue_knows_which_runs_it_holds() {
        let mut q = OutcomeQueue::default();
        let p = pending(1);
        let run = (1, p.outcome.run_id);
        assert!(!q.holds(run));
        q.push(p);
        assert!(q.holds(run));
        assert!(
            !q.holds((1, Uuid::new_v4())),
            "another run of the same task"
        );
        let _batch = q.next_batch().expect("batch");
        assert!(
            !q.holds(run),
            "in flight: the actor tracks that batch itself"
        );
    }

    #[test]
    fn a_spooled_batch_leaves_the_queue() {
        let mut q = OutcomeQueue::default();
        q.push(pending(1));
        q.push(pending(2));
        let batch = q.next_batch().expect("batch");
        assert_eq!(q.failed(batch, true), AfterFailure::Spooled);
        assert!(q.is_idle(), "nothing is kept twice: the spool has them");
    }
}
