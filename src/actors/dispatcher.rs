//! The Dispatcher: claims waiting tasks of the node's group, as many as there are free slots
//! (`max_task_count − running`), in one round trip, and starts one Process actor per task. It
//! reconciles running tasks with the table when told that something changed (cancel, delete,
//! reassignment, a hand-over of the node's tasks). When the node fences itself (cut off past
//! `heartbeat_timeout`) it kills every running process and claims nothing; once a heartbeat
//! succeeds again it has the Outcomes actor hand those runs back. Outcomes are written by the
//! Outcomes actor (`actors::outcomes`).
//!
//! Reacts only to messages (notifications, finished processes, limit changes): no polling loop.
//! Must never block its thread, never claim more than the free slots, and never write an outcome.
//! A node that can run nothing (an embedded node with no handler and no process tasks: a
//! coordinator only) never claims.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::backoff;
use super::outcomes::OutcomesMsg;
use super::process::{KillReason, ProcessActor, ProcessMsg};
use crate::db::queries::{self, Verdict};
use crate::metrics;
use crate::node::{NodeContext, RunEntry};
use crate::resources::{under_floor, Sampler};

/// Messages of the Dispatcher.
#[derive(Message)]
#[rtype(result = "()")]
pub enum DispatcherMsg {
    /// Tasks may be waiting (a notification, a reconnect, start-up).
    Wake,
    /// Running tasks may have been cancelled, deleted or reassigned.
    Reconcile,
    /// The listener (re)connected: besides reconciling, look for rows that say this node runs
    /// a task it does not (a failover that lost its latest commits) and hand them back.
    Resync,
    /// The process limit changed.
    SetLimit(u32),
    /// Stop (true) or resume (false) claiming new tasks.
    Pause(bool),
    /// Free memory is under (true) or back over (false) the node's floor: claim nothing meanwhile.
    LowMemory(bool),
    /// The run of this task ended (its Process actor sent the outcome to Outcomes): a slot is free.
    Finished { task_id: i64 },
    /// Stop every running process for this reason.
    KillAll(KillReason),
    /// The node is cut off past its heartbeat timeout: kill everything, claim nothing.
    Fence,
    /// A heartbeat succeeded again after a fence: hand back the killed runs, claim again.
    Unfence,
}

/// Claims in flight at once. A claim beside one in flight is sent only once half the slots are
/// free: a claim costs the server about a millisecond however few tasks it takes (`claim(1)`
/// 1.07 ms, `claim(25)` 2.54 ms), so a claim per freed slot paid that once per task, while the
/// claim in flight comes back within a few milliseconds and the next takes every slot freed
/// meanwhile (docs/queue.md, "Claims in flight", has the figures). Up to three still go out
/// when many slots free at once (a burst of short handler runs, a large node).
const MAX_CLAIMS_IN_FLIGHT: u32 = 3;

pub struct Dispatcher {
    node: Arc<NodeContext>,
    limit: u32,
    paused: bool,
    low_memory: bool,
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
    /// Fenced by Membership: nothing is claimed.
    fenced: bool,
    /// Runs killed by the fence, to hand back once a heartbeat succeeds again.
    to_release: Vec<(i64, uuid::Uuid)>,
    /// A look for runs this node does not have is scheduled.
    unknown_recheck_armed: bool,
}

impl Dispatcher {
    pub fn new(node: Arc<NodeContext>, limit: u32, paused: bool) -> Self {
        // Membership reports crossings of the memory floor; the state at start is read here.
        let floor = node.config.min_free_memory;
        let low_memory = floor > 0 && under_floor(&Sampler::new().sample(), floor);
        Dispatcher {
            node,
            limit,
            paused,
            low_memory,
            backlog: true,
            wake_seq: 0,
            claims_in_flight: 0,
            reserved: 0,
            claim_failures: 0,
            retry_armed: false,
            reconcile_in_flight: false,
            want_reconcile: true,
            fenced: false,
            to_release: Vec::new(),
            unknown_recheck_armed: false,
        }
    }

    fn free_slots(&self) -> u32 {
        let running = self.node.running().len() as u32;
        self.limit.saturating_sub(running + self.reserved)
    }

    fn maybe_claim(&mut self, ctx: &mut Context<Self>) {
        let options = &self.node.options;
        if (!options.run_commands && options.topics.is_empty())
            || self.paused
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
        if self.claims_in_flight > 0 && free < self.limit.div_ceil(2) {
            return; // the claim in flight comes back soon; the next one takes what freed meanwhile
        }
        self.claims_in_flight += 1;
        self.reserved += free;
        let sent_at_wake = self.wake_seq;
        let node = self.node.clone();
        let n = i32::try_from(free).unwrap_or(i32::MAX);
        let fut = async move {
            let o = &node.options;
            let claim = queries::claim(
                &node.pool,
                node.worker_id,
                node.group_id,
                n,
                &o.topics,
                o.run_commands,
            );
            metrics::timed_db_write(metrics::DbWrite::Claim, claim).await
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
                        act.release(tasks.iter().map(|t| (t.id, t.run_id)).collect());
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
                    // The claim may have committed with its reply lost (the connection dropped
                    // after the commit): its rows would claim runs this node does not have, and
                    // no reconnect need come to find them. Look once they are settled.
                    let settled = act.node.config.heartbeat_timeout + Duration::from_millis(100);
                    act.recheck_unknown_runs(settled, ctx);
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
        self.node.running().insert(
            id,
            RunEntry {
                run_id,
                actor,
                handed_over: false,
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
                            // re-queued for another node: the same kill as a fenced run
                            Verdict::HandedOver => KillReason::Fenced,
                        };
                        let mut running = act.node.running();
                        if let Some(entry) = running.get_mut(&id).filter(|e| e.run_id == run_id) {
                            if verdict == Verdict::HandedOver && !entry.handed_over {
                                entry.handed_over = true;
                                info!(
                                    task_id = id,
                                    %run_id,
                                    "handed over to another node: killing the run"
                                );
                                metrics::run_handed_over();
                            }
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

    /// Hands back the runs the database attributes to this node that it does not have: each row
    /// goes back to the queue under the one hand-back rule (a new run id, a lost re-run counted),
    /// guarded by its run id. Runs that started less than a heartbeat timeout ago are left alone
    /// for now (a claim may still be on its way to this actor) and looked at again once they are
    /// that old: a failover can lose the outcome of a run claimed a moment before it, and no
    /// later reconnect need come to find that row.
    fn hand_back_unknown_runs(&mut self, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        let known: Vec<(i64, uuid::Uuid)> = node
            .running()
            .iter()
            .map(|(id, e)| (*id, e.run_id))
            .collect();
        let settled = node.config.heartbeat_timeout.as_secs_f64();
        let fut = async move { queries::unknown_runs(&node.pool, node.worker_id, &known).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let rows = match result {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(error = %e, "cannot look for runs this node does not have; retrying");
                    act.recheck_unknown_runs(backoff(3), ctx);
                    return;
                }
            };
            let (unknown, young): (Vec<_>, Vec<_>) = {
                let running = act.node.running();
                rows.into_iter()
                    .filter(|r| running.get(&r.id).is_none_or(|e| e.run_id != r.run_id))
                    .partition(|r| r.age_secs >= settled)
            };
            if let Some(youngest) = young.iter().map(|r| r.age_secs).reduce(f64::min) {
                let wait = Duration::from_secs_f64((settled - youngest).max(0.0) + 0.1);
                debug!(runs = young.len(), recheck_in = ?wait, "recent runs this node does not have yet");
                act.recheck_unknown_runs(wait, ctx);
            }
            if unknown.is_empty() {
                return;
            }
            // the Outcomes actor hands them back, unless it holds their outcome (a process that
            // just ended: its outcome reached Outcomes before its Finished reached us)
            let runs = unknown.iter().map(|r| (r.id, r.run_id)).collect();
            match act.node.outcomes() {
                Some(outcomes) => outcomes.do_send(OutcomesMsg::HandBackUnknown(runs)),
                None => warn!("no outcomes actor: runs this node does not have stay for the coordinator"),
            }
        }));
    }

    /// Looks for unknown runs again after `wait` (one pending look at a time).
    fn recheck_unknown_runs(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.unknown_recheck_armed, true) {
            return;
        }
        ctx.run_later(wait, |act, ctx| {
            act.unknown_recheck_armed = false;
            act.hand_back_unknown_runs(ctx);
        });
    }

    /// Has the Outcomes actor hand these runs back (run_id-guarded, retried until it works).
    fn release(&self, runs: Vec<(i64, uuid::Uuid)>) {
        if runs.is_empty() {
            return;
        }
        match self.node.outcomes() {
            Some(outcomes) => outcomes.do_send(OutcomesMsg::Release(runs)),
            None => warn!(
                runs = runs.len(),
                "no outcomes actor: the coordinator hands these runs back"
            ),
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.maybe_claim(ctx);
        self.reconcile(ctx);
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
            }
            DispatcherMsg::Reconcile => {
                self.want_reconcile = true;
                self.reconcile(ctx);
            }
            DispatcherMsg::Resync => {
                self.want_reconcile = true;
                self.reconcile(ctx);
                self.hand_back_unknown_runs(ctx);
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
            DispatcherMsg::Finished { task_id } => {
                self.node.running().remove(&task_id);
                self.maybe_claim(ctx);
            }
            DispatcherMsg::KillAll(reason) => {
                for entry in self.node.running().values() {
                    entry.actor.do_send(ProcessMsg::Kill(reason));
                }
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
                let runs = std::mem::take(&mut self.to_release);
                self.release(runs);
                self.backlog = true;
                self.want_reconcile = true;
                self.reconcile(ctx);
                self.maybe_claim(ctx);
            }
        }
    }
}
