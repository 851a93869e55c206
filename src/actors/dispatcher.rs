//! The Dispatcher: claims waiting tasks of the node's group, as many as there are free slots
//! (`max_task_count − running`), in one round trip, and starts one Process actor per task. It also
//! writes outcomes in batches (each guarded by its run_id) and reconciles running tasks with the
//! table when told that something changed (cancel, delete, reassignment).
//!
//! Outcomes it cannot write go to the node's spool (`cluster::spool`) and are replayed, under the
//! run_id guard, when the database answers again. When the node fences itself (cut off past
//! `heartbeat_timeout`) it kills every running process, claims nothing, and once a heartbeat
//! succeeds again hands those runs back (`long_task.hand_back`, run_id-guarded).
//!
//! Reacts only to messages (notifications, finished processes, limit changes): no polling loop.
//! Must never block its thread, and never claim more than the free slots.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use super::process::{KillReason, ProcessActor, ProcessMsg};
use crate::db::queries::{self, RunOutcome, Verdict};
use crate::metrics;
use crate::node::{NodeContext, RunEntry};
use crate::resources::{under_floor, Sampler};

/// A process actor's report that its run ended.
#[derive(Debug)]
pub struct Finished {
    pub task_id: i64,
    /// The outcome to write, or None when the run was fenced/deleted/abandoned (nothing to write).
    pub outcome: Option<RunOutcome>,
}

/// Messages of the Dispatcher.
#[derive(Message)]
#[rtype(result = "()")]
pub enum DispatcherMsg {
    /// Tasks may be waiting (a notification, a reconnect, start-up).
    Wake,
    /// Running tasks may have been cancelled, deleted or reassigned.
    Reconcile,
    /// The process limit changed.
    SetLimit(u32),
    /// Stop (true) or resume (false) claiming new tasks.
    Pause(bool),
    /// Free memory is under (true) or back over (false) the node's floor: claim nothing meanwhile.
    LowMemory(bool),
    /// A run ended.
    Finished(Finished),
    /// Stop every running process for this reason.
    KillAll(KillReason),
    /// Reply once every queued outcome is written or spooled.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// The node is cut off past its heartbeat timeout: kill everything, claim nothing.
    Fence,
    /// A heartbeat succeeded again after a fence: hand back the killed runs, claim again.
    Unfence,
}

/// Claims in flight at once. With a durable commit costing milliseconds, a slot freed while a
/// claim is in flight would otherwise wait for that claim and then for its own.
const MAX_CLAIMS_IN_FLIGHT: u32 = 3;

pub struct Dispatcher {
    node: Arc<NodeContext>,
    limit: u32,
    paused: bool,
    low_memory: bool,
    /// Run durations (seconds) of outcomes not yet written, for the metrics.
    durations: HashMap<i64, f64>,
    /// Waiting tasks may exist (a wake arrived, or the last claim filled every slot it asked for).
    backlog: bool,
    /// Counts wakes, so a short claim clears `backlog` only if no wake arrived since it was sent.
    wake_seq: u64,
    claims_in_flight: u32,
    /// Slots asked for by claims in flight (never more than the free slots in total).
    reserved: u32,
    claim_failures: u32,
    retry_armed: bool,
    reconcile_in_flight: bool,
    want_reconcile: bool,
    outcomes: Vec<RunOutcome>,
    write_in_flight: bool,
    write_failures: u32,
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Fenced by Membership: nothing is claimed.
    fenced: bool,
    /// Runs killed by the fence, to hand back once the database answers.
    to_release: Vec<(i64, uuid::Uuid)>,
    release_in_flight: bool,
    /// Outcomes wait in the spool.
    spool_pending: bool,
    replay_in_flight: bool,
    replay_failures: u32,
}

impl Dispatcher {
    pub fn new(node: Arc<NodeContext>, limit: u32, paused: bool) -> Self {
        // Membership reports crossings of the memory floor; the state at start is read here.
        let floor = node.config.min_free_memory;
        let low_memory = floor > 0 && under_floor(&Sampler::new().sample(), floor);
        let spool_pending = node_has_spooled(&node);
        Dispatcher {
            node,
            limit,
            paused,
            low_memory,
            durations: HashMap::new(),
            backlog: true,
            wake_seq: 0,
            claims_in_flight: 0,
            reserved: 0,
            claim_failures: 0,
            retry_armed: false,
            reconcile_in_flight: false,
            want_reconcile: true,
            outcomes: Vec::new(),
            write_in_flight: false,
            write_failures: 0,
            flush_waiters: Vec::new(),
            fenced: false,
            to_release: Vec::new(),
            release_in_flight: false,
            spool_pending,
            replay_in_flight: false,
            replay_failures: 0,
        }
    }

    fn free_slots(&self) -> u32 {
        let running = self.node.running().len() as u32;
        self.limit.saturating_sub(running + self.reserved)
    }

    fn maybe_claim(&mut self, ctx: &mut Context<Self>) {
        if self.paused
            || self.fenced
            || self.low_memory
            || !self.backlog
            || self.retry_armed
            || self.claims_in_flight >= MAX_CLAIMS_IN_FLIGHT
        {
            return;
        }
        let free = self.free_slots();
        if free == 0 {
            return; // a finishing run brings us back here
        }
        self.claims_in_flight += 1;
        self.reserved += free;
        let sent_at_wake = self.wake_seq;
        let node = self.node.clone();
        let n = i32::try_from(free).unwrap_or(i32::MAX);
        let fut = async move {
            let o = &node.options;
            queries::claim(
                &node.pool,
                node.worker_id,
                node.group_id,
                n,
                &o.topics,
                o.run_commands,
            )
            .await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.claims_in_flight -= 1;
            act.reserved -= free;
            match result {
                Ok(tasks) => {
                    debug!(asked = free, got = tasks.len(), "claimed");
                    act.claim_failures = 0;
                    if (tasks.len() as u32) < free && act.wake_seq == sent_at_wake {
                        act.backlog = false; // the queue was empty, and nothing was queued since
                    }
                    // A claim that comes back after the node was cut off (or stopped) past its
                    // heartbeat timeout may already have been reassigned: start nothing and hand
                    // the runs straight back (run_id-guarded: a no-op for reassigned ones).
                    if act.fenced || act.node.heartbeat_age() > act.node.config.heartbeat_timeout {
                        warn!(
                            claimed = tasks.len(),
                            "claim returned while this node is cut off: not starting it"
                        );
                        act.to_release
                            .extend(tasks.iter().map(|t| (t.id, t.run_id)));
                        act.release(ctx);
                        return;
                    }
                    for task in tasks {
                        act.start_process(task);
                    }
                }
                Err(e) => {
                    act.claim_failures += 1;
                    let delay = backoff(act.claim_failures);
                    warn!(error = %e, retry_in = ?delay, "claim failed");
                    act.retry_armed = true;
                    ctx.run_later(delay, |act, ctx| {
                        act.retry_armed = false;
                        act.maybe_claim(ctx);
                    });
                }
            }
            act.maybe_claim(ctx);
        }));
    }

    fn start_process(&mut self, task: queries::ClaimedTask) {
        let id = task.id;
        let run_id = task.run_id;
        metrics::task_started(self.node.group_id, task.waited_secs);
        let actor = ProcessActor::new(self.node.clone(), task).start();
        let started = std::time::Instant::now();
        self.node.running().insert(
            id,
            RunEntry {
                run_id,
                actor,
                started,
            },
        );
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.reconcile_in_flight || !self.want_reconcile {
            return;
        }
        let runs: Vec<(i64, uuid::Uuid)> = self
            .node
            .running()
            .iter()
            .map(|(id, e)| (*id, e.run_id))
            .collect();
        self.want_reconcile = false;
        if runs.is_empty() {
            return;
        }
        self.reconcile_in_flight = true;
        let node = self.node.clone();
        let fut = async move { queries::running_state(&node.pool, node.worker_id, &runs).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.reconcile_in_flight = false;
            match result {
                Ok(verdicts) => {
                    for (id, run_id, verdict) in verdicts {
                        let reason = match verdict {
                            Verdict::Run => continue,
                            Verdict::Cancel => KillReason::Cancelled,
                            Verdict::Fenced => KillReason::Fenced,
                            Verdict::Deleted => KillReason::Deleted,
                        };
                        let running = act.node.running();
                        if let Some(entry) = running.get(&id).filter(|e| e.run_id == run_id) {
                            entry.actor.do_send(ProcessMsg::Kill(reason));
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reconcile failed; retrying");
                    act.want_reconcile = true;
                    ctx.run_later(backoff(2), |act, ctx| act.reconcile(ctx));
                    return;
                }
            }
            act.reconcile(ctx);
        }));
    }

    fn write_outcomes(&mut self, ctx: &mut Context<Self>) {
        if self.write_in_flight {
            return;
        }
        if self.outcomes.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        self.write_in_flight = true;
        let batch = std::mem::take(&mut self.outcomes);
        let node = self.node.clone();
        let fut = async move {
            let result = queries::finish_runs(&node.pool, &batch).await;
            (batch, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(batch, result), act, ctx| {
            act.write_in_flight = false;
            match result {
                Ok(written) => {
                    act.write_failures = 0;
                    for outcome in &batch {
                        let duration = act.durations.remove(&outcome.task_id);
                        match written.iter().find(|(id, _)| *id == outcome.task_id) {
                            Some((id, state)) => {
                                metrics::task_finished(act.node.group_id, state, duration);
                                debug!(task_id = id, run_id = %outcome.run_id, state = %state, "outcome written")
                            }
                            None => {
                                metrics::fenced_write();
                                info!(
                                task_id = outcome.task_id,
                                run_id = %outcome.run_id,
                                "outcome discarded: the task no longer belongs to this run (fenced)"
                                )
                            }
                        }
                    }
                    act.write_outcomes(ctx);
                }
                Err(e) => {
                    // The spool keeps them across a restart; replayed when the database answers.
                    if act.spool_batch(&batch) {
                        warn!(error = %e, spooled = batch.len(), "writing outcomes failed; spooled them");
                        act.spool_pending = true;
                        act.write_outcomes(ctx);
                        act.schedule_replay(ctx);
                        return;
                    }
                    // No spool: keep the outcomes (oldest first) and try again.
                    act.write_failures += 1;
                    let delay = backoff(act.write_failures);
                    warn!(error = %e, pending = batch.len() + act.outcomes.len(), retry_in = ?delay, "writing outcomes failed");
                    let newer = std::mem::replace(&mut act.outcomes, batch);
                    act.outcomes.extend(newer);
                    ctx.run_later(delay, |act, ctx| act.write_outcomes(ctx));
                }
            }
        }));
    }
}

/// Whether the node's spool holds outcomes (a start-up replay failed halfway, or none ran).
fn node_has_spooled(node: &NodeContext) -> bool {
    node.spool.as_ref().is_some_and(|s| !s.is_empty())
}

impl Dispatcher {
    /// Writes a batch to the spool; false when there is no spool or it failed (then nothing of the
    /// batch counts as spooled: an outcome spooled twice is replayed once, by its file name).
    fn spool_batch(&self, batch: &[RunOutcome]) -> bool {
        let Some(spool) = &self.node.spool else {
            return false;
        };
        for outcome in batch {
            if let Err(e) = spool.put(outcome) {
                warn!(error = %e, task_id = outcome.task_id, run_id = %outcome.run_id, "cannot spool an outcome");
                return false;
            }
        }
        true
    }

    fn schedule_replay(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff(self.replay_failures.max(1));
        ctx.run_later(delay, |act, ctx| act.replay_spool(ctx));
    }

    /// Writes spooled outcomes (each under its run_id guard) and deletes their files.
    fn replay_spool(&mut self, ctx: &mut Context<Self>) {
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
            let loaded = spool.load().map_err(|e| e.to_string())?;
            if loaded.is_empty() {
                return Ok(0);
            }
            let (paths, outcomes): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
            let written = queries::finish_runs(&node.pool, &outcomes)
                .await
                .map_err(|e| e.to_string())?;
            info!(
                spooled = outcomes.len(),
                written = written.len(),
                "replayed spooled outcomes (the rest were fenced)"
            );
            spool.remove(&paths);
            Ok::<_, String>(outcomes.len())
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.replay_in_flight = false;
            match result {
                Ok(_) => {
                    act.replay_failures = 0;
                    act.spool_pending = false;
                }
                Err(e) => {
                    act.replay_failures += 1;
                    debug!(error = %e, "spool replay failed; retrying");
                    act.schedule_replay(ctx);
                }
            }
        }));
    }

    /// Hands back the runs the fence killed (only rows still AE under those run_ids change).
    fn release(&mut self, ctx: &mut Context<Self>) {
        if self.release_in_flight || self.to_release.is_empty() {
            return;
        }
        self.release_in_flight = true;
        let runs = std::mem::take(&mut self.to_release);
        let node = self.node.clone();
        let fut = async move {
            let result = async {
                let conn = node.pool.get().await?;
                queries::hand_back(&*conn, node.worker_id, "self-fenced", Some(&runs)).await
            }
            .await;
            (runs, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(runs, result), act, ctx| {
            act.release_in_flight = false;
            match result {
                Ok(handed) => info!(
                    killed = runs.len(),
                    handed_back = handed.total(),
                    "self-fenced runs handed back (the rest were already reassigned)"
                ),
                Err(e) => {
                    warn!(error = %e, "cannot hand back self-fenced runs yet; retrying");
                    act.to_release.extend(runs);
                    ctx.run_later(backoff(3), |act, ctx| act.release(ctx));
                }
            }
        }));
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.maybe_claim(ctx);
        self.reconcile(ctx);
        self.replay_spool(ctx);
    }
}

impl Handler<DispatcherMsg> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: DispatcherMsg, ctx: &mut Self::Context) {
        match msg {
            DispatcherMsg::Wake => {
                self.backlog = true;
                self.wake_seq += 1;
                self.maybe_claim(ctx);
                self.replay_spool(ctx);
                self.release(ctx);
            }
            DispatcherMsg::Reconcile => {
                self.want_reconcile = true;
                self.reconcile(ctx);
            }
            DispatcherMsg::SetLimit(limit) => {
                if limit != self.limit {
                    info!(from = self.limit, to = limit, "process limit changed");
                }
                self.limit = limit;
                self.backlog = true;
                self.maybe_claim(ctx);
            }
            DispatcherMsg::Pause(paused) => {
                if paused != self.paused {
                    info!(
                        paused,
                        "claiming {}",
                        if paused { "paused" } else { "resumed" }
                    );
                }
                self.paused = paused;
                self.backlog = true;
                self.maybe_claim(ctx);
            }
            DispatcherMsg::LowMemory(low) => {
                self.low_memory = low;
                self.backlog = true;
                self.maybe_claim(ctx);
            }
            DispatcherMsg::Finished(finished) => {
                let entry = self.node.running().remove(&finished.task_id);
                if let Some(outcome) = finished.outcome {
                    if let Some(entry) = entry {
                        self.durations
                            .insert(outcome.task_id, entry.started.elapsed().as_secs_f64());
                    }
                    self.outcomes.push(outcome);
                    self.write_outcomes(ctx);
                }
                self.maybe_claim(ctx);
            }
            DispatcherMsg::KillAll(reason) => {
                for entry in self.node.running().values() {
                    entry.actor.do_send(ProcessMsg::Kill(reason));
                }
            }
            DispatcherMsg::Flush(reply) => {
                self.flush_waiters.push(reply);
                self.write_outcomes(ctx);
            }
            DispatcherMsg::Fence => {
                self.fenced = true;
                for (id, entry) in self.node.running().iter() {
                    self.to_release.push((*id, entry.run_id));
                    entry.actor.do_send(ProcessMsg::Kill(KillReason::Fenced));
                }
            }
            DispatcherMsg::Unfence => {
                self.fenced = false;
                self.release(ctx);
                self.replay_spool(ctx);
                self.backlog = true;
                self.want_reconcile = true;
                self.reconcile(ctx);
                self.maybe_claim(ctx);
            }
        }
    }
}
