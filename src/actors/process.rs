//! The Process actor: one per running task. Spawns the task's command as an OS process in its own
//! process group, collects bounded output tails, enforces the task's timeout, kills the whole
//! group when told (SIGTERM, then SIGKILL after the grace), and reports the outcome to the
//! Outcomes actor, which writes it guarded by the run_id, and its end to the Dispatcher. A task whose topic has an in-process
//! handler runs that handler instead (a tokio task: a panic fails the attempt, not the node;
//! a kill cancels its token, then drops it after the grace).
//!
//! While the process runs, its tails are registered with the node's live output
//! (`live_output`), which writes them to the task row.
//!
//! Must never write to the database itself (the Outcomes actor owns every outcome write, the
//! live-output loop the tails of running processes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, info_span, warn};

use super::dispatcher::DispatcherMsg;
use super::outcomes::{OutcomesMsg, Pending};
use crate::db::queries::{ClaimedTask, RunOutcome, TaskState};
use crate::handler::{self, CancellationToken, HandlerFn, HandlerOutput};
use crate::node::{NodeContext, NODE_MARKER};
use crate::process::capture::CaptureTarget;
use crate::process::identity::{ChildSetup, TaskLimits};
use crate::process::{self, policy, ExitOutcome, SpawnSpec};

/// Why a process is being stopped; decides what is written afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The task was cancelled (`AC`): the run ends `CC`.
    Cancelled,
    /// The task's timeout elapsed: the run ends `CF` with error `timeout`.
    Timeout,
    /// The run no longer owns the task (re-queued, reassigned, finished elsewhere): write nothing.
    Fenced,
    /// The task row was deleted: write nothing.
    Deleted,
    /// The node is shutting down: write nothing; the task is re-queued.
    Shutdown,
}

/// Messages of a Process actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ProcessMsg {
    Kill(KillReason),
}

pub struct ProcessActor {
    node: Arc<NodeContext>,
    task: ClaimedTask,
    pgid: Option<i32>,
    /// A running in-process handler: its token and a way to drop it.
    handler: Option<(CancellationToken, tokio::task::AbortHandle)>,
    kill_reason: Option<KillReason>,
    /// The limits of this run: the task's (else its group's), bounded by the node's.
    limits: TaskLimits,
    span: tracing::Span,
    /// When the run started (for the run duration metric).
    started: std::time::Instant,
}

/// The argv of a task: `%TASK` elements become the task id.
pub fn build_argv(command: &[String], task_id: i64) -> Vec<String> {
    command
        .iter()
        .map(|arg| {
            if arg == "%TASK" {
                task_id.to_string()
            } else {
                arg.clone()
            }
        })
        .collect()
}

/// The working directory of a task: absolute as given, relative to `root` otherwise.
pub fn resolve_cwd(cwd: Option<&str>, root: Option<&Path>) -> Option<PathBuf> {
    let cwd = cwd.filter(|c| !c.is_empty())?;
    let path = PathBuf::from(cwd);
    if path.is_absolute() {
        return Some(path);
    }
    Some(match root {
        Some(root) => root.join(path),
        None => path,
    })
}

impl ProcessActor {
    pub fn new(node: Arc<NodeContext>, task: ClaimedTask) -> Self {
        let span =
            info_span!("task", task_id = task.id, run_id = %task.run_id, attempt = task.attempt);
        let limits = task.start.limits.bounded_by(&node.config.task_limits);
        ProcessActor {
            node,
            task,
            limits,
            pgid: None,
            handler: None,
            kill_reason: None,
            span,
            started: std::time::Instant::now(),
        }
    }

    /// What to start: the task's argv in its working directory, as the node's user for the
    /// task's group, within the run's limits, with the node's task environment, the task's own
    /// `env` and its `PGTASKD_*` values — and nothing else of the node's. Refused (the run ends
    /// `CF`, nothing starts) when the program cannot be found in the task's `PATH` or is not in
    /// the node's `allowed_programs`, when the group's `run_as` is not one the node may switch
    /// to (or does not exist here), or when the task's `env` breaks the rule.
    fn spawn_spec(&self) -> Result<SpawnSpec, String> {
        let config = &self.node.config;
        let refused = |what: String| {
            format!(
                "node {} ({}) refused to run the task: {what}",
                self.node.worker_id,
                config.node_name()
            )
        };
        let start = &self.task.start;
        let run_as = self
            .node
            .run_as
            .for_group(start.run_as.as_deref())
            .map_err(|e| refused(e.0))?;
        let task_vars = policy::task_env(start.env.as_ref()).map_err(|e| refused(e.0))?;
        let argv = build_argv(self.task.command.as_deref().unwrap_or(&[]), self.task.id);
        let cwd = resolve_cwd(self.task.cwd.as_deref(), config.cwd_root.as_deref());
        let policy = self.node.task_policy();
        let base = &policy.environment;
        let program = match argv.first().filter(|p| !p.is_empty()) {
            Some(name) => {
                let resolved = policy::resolve_program(name, base.path(), cwd.as_deref())
                    .map_err(|e| e.to_string())?;
                policy
                    .programs
                    .check(&resolved)
                    .map_err(|e| refused(e.to_string()))?;
                Some(resolved)
            }
            None => None, // spawn reports the empty command
        };
        // HOME, USER and LOGNAME follow a group's user; the node's default user is in the base
        let other_user = start.run_as.is_some().then_some(run_as.as_ref()).flatten();
        let env = base.for_task(
            other_user,
            task_vars,
            [
                (NODE_MARKER.to_owned(), self.node.node_marker.clone()),
                (
                    "PGTASKD_WORKER_ID".to_owned(),
                    self.node.worker_id.to_string(),
                ),
                (
                    "PGTASKD_GROUP_ID".to_owned(),
                    self.node.group_id.to_string(),
                ),
                ("PGTASKD_TASK_ID".to_owned(), self.task.id.to_string()),
                ("PGTASKD_RUN_ID".to_owned(), self.task.run_id.to_string()),
                ("PGTASKD_ATTEMPT".to_owned(), self.task.attempt.to_string()),
            ],
        );
        Ok(SpawnSpec {
            argv,
            program,
            cwd,
            env,
            setup: ChildSetup {
                run_as,
                limits: self.limits.rlimits(),
            },
            tail_lines: config.tail_lines,
            tail_bytes: config.tail_bytes,
            output_alarm: self.node.live_output.alarm(),
            capture: self.node.output_dir.as_ref().map(|dir| CaptureTarget {
                dir: dir.clone(),
                task_id: self.task.id,
                attempt: self.task.attempt,
                run_id: self.task.run_id,
                max_bytes: config.output_capture_bytes,
            }),
        })
    }

    fn kill(&mut self, reason: KillReason, ctx: &mut Context<Self>) {
        if self.kill_reason.is_some() {
            return; // the first reason decides the outcome
        }
        self.kill_reason = Some(reason);
        if let Some((token, abort)) = &self.handler {
            let _enter = self.span.enter();
            info!(?reason, "cancelling the task's handler");
            token.cancel();
            let abort = abort.clone();
            ctx.run_later(self.node.config.kill_grace, move |_, _| abort.abort());
            return;
        }
        let Some(pgid) = self.pgid else { return };
        let _enter = self.span.enter();
        info!(?reason, pgid, "stopping the task's process group");
        let grace = self.node.config.kill_grace;
        ctx.spawn(
            async move { process::terminate_group(pgid, grace).await }
                .into_actor(self)
                .map(|_, _, _| ()),
        );
    }

    fn outcome(
        &self,
        exit: Option<ExitOutcome>,
        spawn_error: Option<String>,
    ) -> Option<RunOutcome> {
        let (state, error) = match (self.kill_reason, &exit, spawn_error) {
            (_, _, Some(err)) => (TaskState::Failed, Some(err)),
            (Some(KillReason::Fenced | KillReason::Deleted | KillReason::Shutdown), _, _) => {
                return None
            }
            (Some(KillReason::Cancelled), _, _) => (TaskState::Cancelled, Some("cancelled".into())),
            (Some(KillReason::Timeout), _, _) => (TaskState::Failed, Some("timeout".into())),
            (None, Some(exit), None) => {
                let (state, error) = describe_exit(exit);
                let limit = (state == TaskState::Failed)
                    .then(|| self.limits.explain(exit.exit_code, exit.signal))
                    .flatten();
                match (error, limit) {
                    (Some(error), Some(limit)) => (state, Some(format!("{error}: {limit}"))),
                    (error, _) => (state, error),
                }
            }
            (None, None, None) => (TaskState::Failed, Some("process lost".into())),
        };
        Some(RunOutcome {
            task_id: self.task.id,
            run_id: self.task.run_id,
            state,
            error,
            exit_code: exit.as_ref().and_then(|e| e.exit_code),
            exit_signal: exit.as_ref().and_then(|e| e.signal),
            stdout_tail: exit.as_ref().map(|e| e.stdout_tail.clone()),
            stderr_tail: exit.as_ref().map(|e| e.stderr_tail.clone()),
            result: None,
        })
    }

    /// The outcome of an in-process handler (a kill decides first, as for a process).
    fn handler_outcome(
        &self,
        ended: Result<HandlerOutput, tokio::task::JoinError>,
    ) -> Option<RunOutcome> {
        let (state, error, result) = match (self.kill_reason, ended) {
            (Some(KillReason::Fenced | KillReason::Deleted | KillReason::Shutdown), _) => {
                return None
            }
            (Some(KillReason::Cancelled), _) => {
                (TaskState::Cancelled, Some("cancelled".into()), None)
            }
            (Some(KillReason::Timeout), _) => (TaskState::Failed, Some("timeout".into()), None),
            (None, Ok(Ok(result))) => (TaskState::Succeeded, None, result),
            (None, Ok(Err(error))) => (TaskState::Failed, Some(error), None),
            (None, Err(e)) if e.is_panic() => {
                let message = handler::panic_message(&*e.into_panic());
                (
                    TaskState::Failed,
                    Some(format!("handler panicked: {message}")),
                    None,
                )
            }
            (None, Err(_)) => (TaskState::Failed, Some("handler aborted".into()), None),
        };
        Some(RunOutcome {
            task_id: self.task.id,
            run_id: self.task.run_id,
            state,
            error,
            exit_code: None,
            exit_signal: None,
            stdout_tail: None,
            stderr_tail: None,
            result,
        })
    }

    /// Runs the task's handler on the runtime's worker threads (not the arbiter).
    fn run_handler(&mut self, handler: HandlerFn, ctx: &mut Context<Self>) {
        let token = CancellationToken::new();
        let task = handler::Task {
            id: self.task.id,
            run_id: self.task.run_id,
            attempt: self.task.attempt,
            max_attempts: self.task.max_attempts,
            topic: self.task.topic.clone().unwrap_or_default(),
            params: self.task.params.clone().unwrap_or(serde_json::Value::Null),
            cancel: token.clone(),
        };
        let join = tokio::spawn(async move { handler(task).await });
        self.handler = Some((token, join.abort_handle()));
        self.span.in_scope(|| debug!("handler started"));
        self.arm_timeout(ctx);
        ctx.spawn(join.into_actor(self).map(|ended, act, ctx| {
            let outcome = act.handler_outcome(ended);
            act.finish(outcome, ctx);
        }));
    }

    fn arm_timeout(&self, ctx: &mut Context<Self>) {
        if let Some(secs) = self.task.timeout_secs.filter(|s| s.is_finite() && *s > 0.0) {
            ctx.run_later(Duration::from_secs_f64(secs), |act, ctx| {
                act.kill(KillReason::Timeout, ctx)
            });
        }
    }

    fn finish(&mut self, outcome: Option<RunOutcome>, ctx: &mut Context<Self>) {
        let _enter = self.span.enter();
        self.node.live_output.unregister(self.task.id);
        if let Some(outcome) = outcome {
            debug!(state = outcome.state.code(), error = ?outcome.error, "run ended");
            let pending = Pending {
                outcome,
                duration: Some(self.started.elapsed().as_secs_f64()),
            };
            // first the outcome, then the free slot: a node draining for shutdown flushes the
            // Outcomes actor once no run is left, and must find this outcome there
            match self.node.outcomes() {
                Some(outcomes) => outcomes.do_send(OutcomesMsg::Record(pending)),
                None => warn!("no outcomes actor to report to; the task will be recovered"),
            }
        }
        match self.node.dispatcher() {
            Some(d) => d.do_send(DispatcherMsg::Finished {
                task_id: self.task.id,
            }),
            None => warn!("no dispatcher to report to"),
        }
        ctx.stop();
    }
}

/// The state and error text of a process that ended by itself.
fn describe_exit(exit: &ExitOutcome) -> (TaskState, Option<String>) {
    match (exit.exit_code, exit.signal) {
        (Some(0), _) => (TaskState::Succeeded, None),
        (Some(code), _) => (TaskState::Failed, Some(format!("exited with code {code}"))),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {sig}"));
            (TaskState::Failed, Some(format!("killed by {name}")))
        }
        (None, None) => (TaskState::Failed, Some("ended without a status".into())),
    }
}

impl Actor for ProcessActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let handler =
            (self.task.topic.as_deref()).and_then(|topic| self.node.options.handlers.get(topic));
        if let Some(handler) = handler {
            self.run_handler(handler, ctx);
            return;
        }
        let spawned = self.spawn_spec().and_then(|spec| {
            let _enter = self.span.enter();
            let running = process::spawn(&spec).map_err(|e| e.to_string())?;
            debug!(pgid = running.pid, argv = ?spec.argv, "process started");
            Ok(running)
        });
        let running = match spawned {
            Ok(running) => running,
            Err(e) => {
                self.span
                    .in_scope(|| warn!(error = %e, "cannot start the task's process"));
                let outcome = self.outcome(None, Some(e));
                self.finish(outcome, ctx);
                return;
            }
        };
        let pgid = running.pid;
        self.pgid = Some(pgid);
        self.node
            .live_output
            .register(self.task.id, self.task.run_id, running.live_tails());
        if let Some(guardian) = &self.node.guardian {
            guardian.register(pgid);
        }
        self.arm_timeout(ctx);
        // spawn, not wait: the mailbox must stay open for Kill while the process runs
        ctx.spawn(running.wait().into_actor(self).map(move |exit, act, ctx| {
            if let Some(guardian) = &act.node.guardian {
                guardian.unregister(pgid);
            }
            let outcome = act.outcome(Some(exit), None);
            act.finish(outcome, ctx);
        }));
    }
}

impl Handler<ProcessMsg> for ProcessActor {
    type Result = ();

    fn handle(&mut self, msg: ProcessMsg, ctx: &mut Self::Context) {
        match msg {
            ProcessMsg::Kill(reason) => self.kill(reason, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_placeholder_becomes_the_id() {
        let argv = build_argv(&["echo".into(), "%TASK".into(), "x%TASK".into()], 42);
        assert_eq!(argv, vec!["echo", "42", "x%TASK"]);
    }

    #[test]
    fn relative_cwd_is_under_the_root() {
        let root = Path::new("/srv/tasks");
        assert_eq!(
            resolve_cwd(Some("a/b"), Some(root)),
            Some(PathBuf::from("/srv/tasks/a/b"))
        );
        assert_eq!(
            resolve_cwd(Some("/tmp"), Some(root)),
            Some(PathBuf::from("/tmp"))
        );
        assert_eq!(resolve_cwd(Some(""), Some(root)), None);
        assert_eq!(resolve_cwd(None, Some(root)), None);
    }

    #[test]
    fn exit_statuses_are_described() {
        let exit = |code, signal| ExitOutcome {
            exit_code: code,
            signal,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        assert_eq!(describe_exit(&exit(Some(0), None)).0, TaskState::Succeeded);
        assert_eq!(
            describe_exit(&exit(Some(3), None)),
            (TaskState::Failed, Some("exited with code 3".into()))
        );
        assert_eq!(
            describe_exit(&exit(None, Some(9))),
            (TaskState::Failed, Some("killed by SIGKILL".into()))
        );
    }
}
