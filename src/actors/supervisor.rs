//! The Supervisor: starts the node's actors in order, recreates any that crashed (actix does not
//! restart a panicked actor: a closed mailbox is a crash), and owns shutdown — on SIGTERM/SIGINT
//! and on the stop codes of the worker row:
//!
//! | trigger | effect |
//! |---|---|
//! | `stop = 1` | no new tasks; running ones go on; `stop = 0` resumes |
//! | `stop = 2` | no new tasks; wait for the running ones; exit |
//! | `stop = 3` | cancel every running task (they end `CC`); exit |
//! | SIGTERM / SIGINT | no new tasks; wait up to `shutdown_grace`; kill and re-queue the rest; exit |
//! | second signal | kill and re-queue at once; exit |
//!
//! Before exiting it writes every pending outcome, re-queues what it abandoned and marks the
//! worker row inactive; the row itself stays (a restart and pinned tasks need it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use super::coordinator::{Coordinator, CoordinatorMsg};
use super::dispatcher::{Dispatcher, DispatcherMsg};
use super::listener::Listener;
use super::membership::Membership;
use super::outcomes::{Outcomes, OutcomesMsg};
use super::process::KillReason;
use super::scheduler::Scheduler;
use crate::db::queries::{self, WorkerControl};
use crate::node::{NodeContext, PreparedNode};

/// Messages of the Supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SupervisorMsg {
    /// The worker row's stop code (read by Membership).
    StopCode(i16),
    /// SIGTERM or SIGINT arrived.
    Signal(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Wait for running tasks until the deadline (None: no deadline), then kill and re-queue.
    Drain(Option<Instant>),
    /// Cancel all running tasks.
    CancelAll,
    /// Kill and re-queue now.
    Now,
}

pub struct Supervisor {
    node: Arc<NodeContext>,
    membership_setup: Option<(tokio_postgres::Client, WorkerControl)>,
    listener: Option<Addr<Listener>>,
    shutdown: Option<Shutdown>,
    finishing: bool,
}

impl Supervisor {
    pub fn new(prepared: PreparedNode) -> Self {
        Supervisor {
            node: prepared.context,
            membership_setup: Some((prepared.membership_client, prepared.control)),
            listener: None,
            shutdown: None,
            finishing: false,
        }
    }

    fn start_dispatcher(&self, paused: bool) {
        let limit = self.node.config.max_tasks;
        let addr = Dispatcher::new(self.node.clone(), limit, paused).start();
        self.node.peers().dispatcher = Some(addr);
    }

    fn start_outcomes(&self) {
        let addr = Outcomes::new(self.node.clone()).start();
        self.node.peers().outcomes = Some(addr);
    }

    fn start_scheduler(&self) {
        let addr = Scheduler::new(self.node.clone()).start();
        self.node.peers().scheduler = Some(addr);
    }

    fn start_membership(&mut self) {
        let (client, control) = match self.membership_setup.take() {
            Some((client, control)) => (Some(client), Some(control)),
            None => (None, None),
        };
        let addr = Membership::new(self.node.clone(), client, control).start();
        self.node.peers().membership = Some(addr);
    }

    fn start_coordinator(&self) {
        let addr = Coordinator::new(self.node.clone()).start();
        self.node.peers().coordinator = Some(addr);
    }

    fn start_listener(&mut self) {
        self.listener = Some(Listener::new(self.node.clone()).start());
    }

    /// Recreates any actor whose mailbox closed (it panicked or stopped unexpectedly).
    fn watchdog(&mut self) {
        let paused = self.shutdown.is_some();
        let (outcomes_dead, dispatcher_dead, scheduler_dead, membership_dead, coordinator_dead) = {
            let peers = self.node.peers();
            (
                !peers.outcomes.as_ref().is_some_and(|a| a.connected()),
                !peers.dispatcher.as_ref().is_some_and(|a| a.connected()),
                !peers.scheduler.as_ref().is_some_and(|a| a.connected()),
                !peers.membership.as_ref().is_some_and(|a| a.connected()),
                !peers.coordinator.as_ref().is_some_and(|a| a.connected()),
            )
        };
        if outcomes_dead {
            error!("outcomes actor crashed; restarting it (unwritten outcomes are re-run)");
            self.start_outcomes();
        }
        if coordinator_dead && self.shutdown.is_none() {
            error!("coordinator crashed; restarting it");
            self.start_coordinator();
        }
        if dispatcher_dead {
            error!("dispatcher crashed; restarting it");
            self.start_dispatcher(paused);
        }
        if scheduler_dead && self.shutdown.is_none() {
            error!("scheduler crashed; restarting it");
            self.start_scheduler();
        }
        if membership_dead {
            error!("membership crashed; restarting it");
            self.start_membership();
        }
        if !self.listener.as_ref().is_some_and(|a| a.connected()) && self.shutdown.is_none() {
            error!("listener crashed; restarting it");
            self.start_listener();
        }
    }

    fn watch_signals(&self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        actix::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if addr.try_send(SupervisorMsg::Signal(name)).is_err() {
                    return;
                }
            }
        });
    }

    fn begin_shutdown(&mut self, mode: Shutdown, ctx: &mut Context<Self>) {
        let first = self.shutdown.is_none();
        self.shutdown = Some(mode);
        if let Some(d) = self.node.dispatcher() {
            d.do_send(DispatcherMsg::Pause(true));
            match mode {
                Shutdown::CancelAll => d.do_send(DispatcherMsg::KillAll(KillReason::Cancelled)),
                Shutdown::Now => d.do_send(DispatcherMsg::KillAll(KillReason::Shutdown)),
                Shutdown::Drain(_) => {}
            }
        }
        if first {
            ctx.run_interval(Duration::from_millis(50), |act, ctx| act.poll_shutdown(ctx));
        }
    }

    fn poll_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.finishing {
            return;
        }
        let running = self.node.running().len();
        if let Some(Shutdown::Drain(Some(deadline))) = self.shutdown {
            if running > 0 && Instant::now() >= deadline {
                warn!(
                    running,
                    "shutdown grace over: killing the remaining tasks (they are re-queued)"
                );
                self.begin_shutdown(Shutdown::Now, ctx);
            }
        }
        if running > 0 {
            return;
        }
        self.finishing = true;
        if let Some(c) = self.node.coordinator() {
            c.do_send(CoordinatorMsg::Stop);
        }
        let node = self.node.clone();
        let outcomes = node.outcomes();
        let fut = async move {
            if let Some(o) = outcomes {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if o.send(OutcomesMsg::Flush(tx)).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(10), rx)
                        .await
                        .is_err()
                {
                    warn!(
                        "could not write every outcome before exiting; the tasks will be re-queued"
                    );
                }
            }
            finish_worker_row(&node).await;
        };
        ctx.spawn(fut.into_actor(self).map(|_, _, _| {
            info!("node stopped");
            System::current().stop();
        }));
    }
}

/// Hands back what the node abandoned and marks its row inactive (the row stays).
async fn finish_worker_row(node: &NodeContext) {
    let result = async {
        let conn = node.pool.get().await?;
        let handed = queries::hand_back(&*conn, node.worker_id, "node stopped", None).await?;
        queries::mark_stopped(&conn, node.worker_id).await?;
        Ok::<_, crate::db::DbError>(handed)
    }
    .await;
    match result {
        Ok(handed) if handed.total() == 0 => {}
        Ok(handed) => info!(
            requeued = handed.requeued,
            failed = handed.failed,
            cancelled = handed.cancelled,
            "abandoned tasks handed back"
        ),
        Err(e) => {
            warn!(error = %e, "could not mark the node stopped; it will be recovered at restart")
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.node.peers().supervisor = Some(ctx.address());
        let paused = self
            .membership_setup
            .as_ref()
            .is_some_and(|(_, c)| c.stop == 1);
        self.start_outcomes();
        self.start_dispatcher(paused);
        self.start_scheduler();
        self.start_membership();
        self.start_coordinator();
        self.start_listener();
        // a plain task, not an actor: it holds no state a restart would need
        let span = tracing::info_span!(
            "live_output",
            worker_id = self.node.worker_id,
            group_id = self.node.group_id
        );
        actix::spawn(tracing::Instrument::instrument(
            crate::live_output::run(self.node.clone()),
            span,
        ));
        // the retention of captured output (also swept at start-up)
        if let Some(dir) = self.node.output_dir.clone() {
            let keep = self.node.config.output_capture_keep;
            ctx.run_interval(Duration::from_secs(3600), move |_, _| {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || crate::process::capture::sweep(&dir, keep));
            });
        }
        // an embedded node leaves the host program's signals alone (it stops through its handle)
        if !self.node.options.embedded {
            self.watch_signals(ctx);
        }
        ctx.run_interval(Duration::from_secs(1), |act, _| act.watchdog());
    }
}

impl Handler<SupervisorMsg> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SupervisorMsg, ctx: &mut Self::Context) {
        match msg {
            SupervisorMsg::StopCode(code) => match code {
                0 | 1 if self.shutdown.is_none() => {
                    if let Some(d) = self.node.dispatcher() {
                        d.do_send(DispatcherMsg::Pause(code == 1));
                    }
                }
                2 if self.shutdown.is_none() => {
                    info!("stop code 2: draining, then exiting");
                    self.begin_shutdown(Shutdown::Drain(None), ctx);
                }
                3 => {
                    info!("stop code 3: cancelling every running task, then exiting");
                    self.begin_shutdown(Shutdown::CancelAll, ctx);
                }
                _ => {}
            },
            SupervisorMsg::Signal(name) => {
                if self.shutdown.is_none() {
                    let grace = self.node.config.shutdown_grace;
                    info!(
                        signal = name,
                        ?grace,
                        "shutting down: no new tasks, waiting for running ones"
                    );
                    self.begin_shutdown(Shutdown::Drain(Some(Instant::now() + grace)), ctx);
                } else {
                    warn!(
                        signal = name,
                        "second signal: killing running tasks now (they are re-queued)"
                    );
                    self.begin_shutdown(Shutdown::Now, ctx);
                }
            }
        }
    }
}
