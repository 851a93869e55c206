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
//!
//! It also speaks for the node to the host's service manager (`crate::service`): `READY=1` once
//! the actors have started, `STATUS=` as it changes, `STOPPING=1` when shutdown begins, the
//! watchdog keep-alive while the node is alive, and SIGHUP reloads the configuration
//! (`crate::reload`).

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
use crate::reload::{self, ReloadReport};
use crate::service::{Liveness, ServiceManager};

/// Messages of the Supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SupervisorMsg {
    /// The worker row's stop code (read by Membership).
    StopCode(i16),
    /// SIGTERM or SIGINT arrived.
    Signal(&'static str),
    /// SIGHUP arrived: read the configuration again.
    Reload,
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
    service: ServiceManager,
    /// A reload is running; `reload_again`: another SIGHUP came meanwhile.
    reloading: bool,
    reload_again: bool,
    /// The watchdog keep-alive is being withheld (logged once per episode).
    withholding: bool,
    /// SIGHUP, registered before start-up so that one arriving meanwhile neither kills the node
    /// (the default action) nor is lost: it is handled once the actors run.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Supervisor {
    pub fn new(prepared: PreparedNode) -> Self {
        let prepared_embedded = prepared.context.options.embedded;
        Supervisor {
            node: prepared.context,
            membership_setup: Some((prepared.membership_client, prepared.control)),
            listener: None,
            shutdown: None,
            finishing: false,
            service: ServiceManager::new(!prepared_embedded),
            reloading: false,
            reload_again: false,
            withholding: false,
            hangup: None,
        }
    }

    /// The SIGHUP stream `node::run` registered before start-up.
    pub fn with_hangup(mut self, hangup: Option<tokio::signal::unix::Signal>) -> Self {
        self.hangup = hangup;
        self
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

    fn watch_signals(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let hangup = self.hangup.take();
        actix::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            let mut hup = match hangup {
                Some(hup) => Some(hup),
                None => match signal(SignalKind::hangup()) {
                    Ok(hup) => Some(hup),
                    Err(e) => {
                        error!(error = %e, "cannot install the SIGHUP handler: no live reload");
                        None
                    }
                },
            };
            loop {
                let msg = tokio::select! {
                    _ = term.recv() => SupervisorMsg::Signal("SIGTERM"),
                    _ = int.recv() => SupervisorMsg::Signal("SIGINT"),
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => SupervisorMsg::Reload,
                };
                if addr.try_send(msg).is_err() {
                    return;
                }
            }
        });
    }

    fn begin_shutdown(&mut self, mode: Shutdown, ctx: &mut Context<Self>) {
        let first = self.shutdown.is_none();
        self.shutdown = Some(mode);
        if first {
            let status = self.status_line();
            self.service.stopping(&status);
        }
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
        let handed = queries::hand_back(&**conn, node.worker_id, "node stopped", None).await?;
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

impl Supervisor {
    /// The one-line summary the service manager shows (`systemctl status`).
    fn status_line(&self) -> String {
        let running = self.node.running().len();
        let standing = *self.node.standing();
        let group = self.node.group_id;
        if self.shutdown.is_some() {
            return format!("stopping: {running} task(s) still running");
        }
        if standing.fenced {
            return format!(
                "fenced: no heartbeat for {}s, claiming nothing; {running} task(s) running",
                standing.last_heartbeat.elapsed().as_secs()
            );
        }
        match standing.term {
            Some(term) => {
                format!("group {group}: {running} task(s) running; coordinator (term {term})")
            }
            None => format!("group {group}: {running} task(s) running"),
        }
    }

    /// Feeds the service manager's watchdog while the node is alive (`service::Liveness`).
    fn feed_watchdog(&mut self) {
        let actors_connected = {
            let peers = self.node.peers();
            peers.outcomes.as_ref().is_some_and(|a| a.connected())
                && peers.dispatcher.as_ref().is_some_and(|a| a.connected())
                && peers.membership.as_ref().is_some_and(|a| a.connected())
        };
        let liveness = Liveness {
            last_round: self.node.standing().last_round,
            actors_connected,
        };
        let cfg = &self.node.config;
        let limit = Liveness::round_limit(cfg.heartbeat_interval, cfg.heartbeat_timeout);
        if liveness.alive(limit) {
            if std::mem::take(&mut self.withholding) {
                info!("watchdog keep-alive resumed");
            }
            self.service.watchdog();
        } else if !std::mem::replace(&mut self.withholding, true) {
            error!(
                since_last_heartbeat_round = ?liveness.last_round.elapsed(),
                actors_connected,
                "withholding the watchdog keep-alive: the node looks hung; the service manager will restart it"
            );
        }
    }

    /// SIGHUP: reads the configuration again and applies what can change live.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.reloading {
            self.reload_again = true;
            return;
        }
        if self.node.options.reload.is_none() {
            info!("SIGHUP: this node has no configuration source to read again; nothing changed");
            return;
        }
        self.reloading = true;
        self.service.reloading();
        info!("SIGHUP: reading the configuration again");
        let node = self.node.clone();
        let fut = async move { reload::reload(&node).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.reloading = false;
            match result {
                Ok(report) => log_reload(&report),
                Err(e) => error!(
                    error = %e,
                    "configuration reload refused: keeping the running configuration"
                ),
            }
            let status = act.status_line();
            act.service.ready(&status);
            if std::mem::take(&mut act.reload_again) {
                act.reload(ctx);
            }
        }));
    }
}

/// What a reload did, clearly: what was applied, what failed, what needs a restart.
fn log_reload(report: &ReloadReport) {
    if report.applied.is_empty() && report.failed.is_empty() && report.need_restart.is_empty() {
        info!("configuration reloaded: nothing changed");
        return;
    }
    if !report.applied.is_empty() {
        info!(
            changed = %report.applied.join("; "),
            "configuration reloaded"
        );
    }
    if !report.failed.is_empty() {
        error!(
            failed = %report.failed.join("; "),
            "configuration reload: these settings could not be applied and keep their running values (the next SIGHUP tries again)"
        );
    }
    if !report.need_restart.is_empty() {
        warn!(
            keys = %report.need_restart.join(", "),
            "configuration reload: these changed settings take effect only after a restart; they keep their running values"
        );
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
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.watchdog();
            let status = act.status_line();
            act.service.status(&status);
        });
        if let Some(every) = self.service.watchdog_interval() {
            info!(?every, "feeding the service manager's watchdog");
            self.feed_watchdog();
            ctx.run_interval(every, |act, _| act.feed_watchdog());
        }
        // Connected, schema migrated or checked, registered, liveness lock held (prepare), and
        // the Dispatcher's first claim queued: ready.
        let status = self.status_line();
        self.service.ready(&status);
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
            SupervisorMsg::Reload => self.reload(ctx),
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
