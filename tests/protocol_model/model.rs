//! The cluster protocol as a finite state machine for `stateright`: the database rows the
//! protocol's SQL functions read and write (the group's advisory lock, `long_task.coordinator`,
//! `long_task.worker`, `long_task.task`), the nodes (mode, own heartbeat age, fence, believed
//! term, local runs, outcome spool) and history variables the properties read.
//!
//! Each action's guard is the `WHERE` clause (or `IF`) of the SQL function named in its doc
//! comment; docs/clustering.md ("The protocol, model-checked") has the table. Time is one step,
//! `TimePasses`, for a node that does not beat: its heartbeat goes stale and the node's own
//! clock says so too; no property rests on how long anything takes. A coordinator round is two
//! steps (`RoundObserve`, `RoundAct`) because `long_task.coordinate` reads pg_locks and the worker
//! rows once (the loop's cursor) and hands back with later statements that see newer commits
//! (READ COMMITTED). The steps themselves, each with the SQL it mirrors, are in `steps.rs`.

use stateright::{Model, Property};

/// What a run's process ended with.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// `long_task.task.state_id` (cancels are not modelled: `AC`/`CC` follow the same guards).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TaskState {
    AW,
    AE,
    CS,
    CF,
}

/// One `long_task.task` row. `run` is `run_id` (NULL outside `AE`: the state-machine trigger
/// clears it, and an unpinned `worker_id`, on every move to `AW`); run ids are numbered by claim,
/// so "a newer run id exists" is `run < issued`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TaskRow {
    pub state: TaskState,
    pub worker: Option<u8>,
    pub run: Option<u8>,
    pub issued: u8,
    pub attempt: u8,
    pub lost_reruns: u8,
}

/// One `long_task.worker` row plus the node's liveness lock `(ns_node(), id)` in pg_locks.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct WorkerRow {
    /// An exclusive hold of the liveness lock (the node's membership session lives).
    pub liveness_lock: bool,
    /// `heartbeat_at` is younger than `heartbeat_timeout`.
    pub fresh: bool,
    /// `heartbeat_at` is later than the coordinator session's `backend_start` (it beat on this
    /// server since: a free lock then means death at once, not a reconnect after a restart).
    pub beat_here: bool,
    pub active: bool,
}

/// What a node process is doing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// SIGSTOPped (or frozen): does nothing; its sessions stay open on the server.
    Hung,
    /// Runs but cannot reach the database; its sessions stay open on the server until ended.
    Partitioned,
    /// Crashed: its sessions are gone, its processes killed (the guardian), its spool kept.
    Down,
}

/// A run as its node knows it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Local {
    Running,
    /// Ended; the outcome waits in the Outcomes actor (memory).
    Done(Outcome),
    /// Ended; the outcome is in `<state_dir>/…/spool/` (disk: survives a crash).
    Spooled(Outcome),
    /// Killed by the self-fence; to be handed back once the heartbeat works again.
    Killed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalRun {
    pub task: u8,
    pub run: u8,
    pub local: Local,
}

/// A coordinator round between its read and its writes: `(term, dead node, its lock was free)`.
pub type Round = (u8, u8, bool);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Node {
    pub mode: Mode,
    /// Its own last successful heartbeat is older than `heartbeat_timeout`.
    pub late: bool,
    pub fenced: bool,
    /// The term it believes it holds (`NodeContext::standing().term`).
    pub term: Option<u8>,
    pub runs: Vec<LocalRun>,
    /// Its listener lost its connection: at reconnect the Dispatcher resyncs.
    pub resync_due: bool,
    pub round: Option<Round>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// The holder of the group lock `(ns_group(), group)`: a node's coordinator session.
    pub group_lock: Option<u8>,
    /// `long_task.coordinator`: `(term, worker_id)`.
    pub coordinator: Option<(u8, u8)>,
    pub workers: Vec<WorkerRow>,
    pub tasks: Vec<TaskRow>,
    pub nodes: Vec<Node>,
    pub faults: u8,
    // History variables, read by the properties only.
    /// Per task, the run ids whose outcome `complete_runs` accepted (bit `run`).
    pub accepted: Vec<u8>,
    pub accepted_twice: bool,
    pub accepted_stale: bool,
    /// The latest term a coordinator wrote under, and who wrote.
    pub acted: Option<(u8, u8)>,
    /// Two nodes wrote as coordinator under one term.
    pub two_acted_in_a_term: bool,
    /// A coordinator wrote under a term that was no longer `long_task.coordinator`'s.
    pub acted_in_old_term: bool,
    /// A node handed back a run whose outcome it held (the outcome is then discarded).
    pub outcome_discarded: bool,
    /// A round handed back the runs of a node the database showed alive at that moment.
    pub live_node_handed_back: bool,
}

/// One step. Node and task numbers index `State::nodes` and `State::tasks`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    /// `(node, task)`: `long_task.claim`, `WHERE x.state_id = 'AW' AND (x.worker_id IS NULL OR
    /// x.worker_id = p_worker_id)`; a new `run_id`, `attempt + 1`.
    Claim(u8, u8),
    /// A fault: `long_task.claim` commits but its reply never reaches the node.
    ClaimReplyLost(u8, u8),
    /// `(node, task, run, outcome)`: the run's process exits (`Process::finish`).
    Finish(u8, u8, u8, Outcome),
    /// `long_task.complete_runs`, `WHERE x.id = u.id AND x.run_id = u.run_id` and
    /// `old.state_id IN ('AE', 'AC')`.
    WriteOutcome(u8, u8, u8),
    /// A fault: `long_task.complete_runs` commits, its reply is lost, the node spools the outcome.
    WriteOutcomeReplyLost(u8, u8, u8),
    /// `outcomes::replay_spool` → `long_task.complete_runs`, the same run-id guard.
    ReplaySpool(u8, u8, u8),
    /// `pg_try_advisory_lock(ns_node(), id)` when lost, then `UPDATE long_task.worker SET
    /// heartbeat_at = now(), active = true WHERE id = $1`.
    Heartbeat(u8),
    /// A node that does not beat: `heartbeat_at < now() - timeout`, its own clock likewise.
    TimePasses(u8),
    /// `Membership::check_fence`: its heartbeat is late; kill every process, claim nothing.
    SelfFence(u8),
    /// `long_task.hand_back(me, 'self-fenced', pairs)`, `WHERE t.worker_id = p_worker_id AND
    /// t.state_id IN ('AE','AC') AND (t.id, t.run_id) IN (pairs)`.
    HandBackKilled(u8),
    /// `queries::unknown_runs` (`worker_id = $1 AND state_id IN ('AE','AC') AND id <> ALL
    /// (running ids)`) then `long_task.hand_back(me, 'not running on its node', pairs)`.
    Resync(u8),
    /// `pg_advisory_lock(ns_group(), group)`: the lock is free.
    LockGroup(u8),
    /// `long_task.become_coordinator`: `IF NOT long_task.holds_group_lock(p_group_id) THEN
    /// RAISE`; `term = c.term + 1`.
    BecomeCoordinator(u8),
    /// `long_task.depose_stale_coordinator`: `holder <> p_by_worker_id` and no worker row
    /// `w.id = holder AND w.heartbeat_at >= now() - timeout` → `terminate_node_sessions`.
    DeposeStale(u8),
    /// `(coordinator, node)`: `long_task.coordinate`'s read, `holds_group_lock` and `c.term =
    /// p_term AND c.worker_id = p_worker_id`; the node dead: `NOT (c.id = ANY (live))` or stale.
    RoundObserve(u8, u8),
    /// `long_task.coordinate`'s writes: `c.term = p_term AND c.worker_id = p_worker_id FOR
    /// UPDATE`, then `terminate_node_sessions`, `active = false`, `long_task.hand_back(d, …)`.
    RoundAct(u8),
    /// `coordinator::campaign` returns: own heartbeat late, session lost, term superseded.
    StepDown(u8),
    /// `long_task.scheduler_tick_as`: `c.term = p_term AND c.worker_id = p_worker_id FOR SHARE`.
    SchedulerTick(u8),
    /// A fault: the node dies; its sessions end, its spool stays.
    Crash(u8),
    /// A fault: SIGSTOP; its sessions stay open.
    Hang(u8),
    /// A fault: cut off from the database; it keeps running.
    Partition(u8),
    /// The server's keepalives end a cut-off node's sessions (`db::connect`) — when the cut is
    /// a clean one. Behind a half-open middlebox (the chaos proxy) they never do: only a
    /// coordinator's `terminate_node_sessions` ends them, so this is not a progress step.
    SessionsDropped(u8),
    /// SIGCONT.
    Resume(u8),
    /// The network is back; the listener reconnects (a resync is due).
    Heal(u8),
    /// `node::prepare`: liveness lock, register, replay the spool, then
    /// `long_task.hand_back(me, 'node restarted')`.
    Restart(u8),
}

impl Action {
    /// The steps the system takes by itself and eventually (fairness): everything but faults,
    /// recoveries and the scheduler's tick (which changes only history). `SessionsDropped` is
    /// not progress either: a half-open cut keeps a silent client's sessions open for good, so
    /// every task must reach a final state without the server ever dropping them.
    pub fn is_progress(&self) -> bool {
        !matches!(
            self,
            Action::ClaimReplyLost(..)
                | Action::WriteOutcomeReplyLost(..)
                | Action::SchedulerTick(_)
                | Action::Crash(_)
                | Action::Hang(_)
                | Action::Partition(_)
                | Action::SessionsDropped(_)
                | Action::Resume(_)
                | Action::Heal(_)
                | Action::Restart(_)
        )
    }
}

/// The model's size and the guards that may be turned off to show the checker catches it.
#[derive(Clone, Debug)]
pub struct Protocol {
    pub nodes: u8,
    pub tasks: u8,
    /// Crashes, hangs, partitions and lost replies, in all.
    pub max_faults: u8,
    /// `task.max_attempts` (a failure before the last attempt goes back to `AW`).
    pub max_attempts: u8,
    /// `max_lost_reruns` (the default: 1).
    pub max_lost_reruns: u8,
    /// A claim's commit whose reply never reaches the node (a pooled connection lost after it).
    pub lost_claim_replies: bool,
    /// Break: no `c.term = p_term` in `coordinate` and `scheduler_tick_as`.
    pub skip_term_check: bool,
    /// Break: no `x.run_id = u.run_id` in `complete_runs`.
    pub skip_run_id_check: bool,
    /// The resync before d3b652b: the Dispatcher handed back every run not in `running()`,
    /// outcomes still held by its Outcomes actor included (main hands those back no more).
    pub resync_discards_held_outcomes: bool,
    /// The round before this branch's fix: no re-check of a dead node's liveness lock and
    /// heartbeat between `coordinate`'s read and its writes.
    pub round_acts_on_its_first_read: bool,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            nodes: 2,
            tasks: 2,
            max_faults: 1,
            max_attempts: 1,
            max_lost_reruns: 1,
            lost_claim_replies: false,
            skip_term_check: false,
            skip_run_id_check: false,
            resync_discards_held_outcomes: false,
            round_acts_on_its_first_read: false,
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let nodes = self.nodes as usize;
        let mut nodes_init = vec![
            Node {
                mode: Mode::Up,
                late: false,
                fenced: false,
                term: None,
                runs: Vec::new(),
                resync_due: false,
                round: None,
            };
            nodes
        ];
        nodes_init[0].term = Some(1);
        vec![State {
            group_lock: Some(0),
            coordinator: Some((1, 0)),
            workers: vec![
                WorkerRow {
                    liveness_lock: true,
                    fresh: true,
                    beat_here: true,
                    active: true,
                };
                nodes
            ],
            tasks: vec![
                TaskRow {
                    state: TaskState::AW,
                    worker: None,
                    run: None,
                    issued: 0,
                    attempt: 0,
                    lost_reruns: 0,
                };
                self.tasks as usize
            ],
            nodes: nodes_init,
            faults: 0,
            accepted: vec![0; self.tasks as usize],
            accepted_twice: false,
            accepted_stale: false,
            acted: None,
            two_acted_in_a_term: false,
            acted_in_old_term: false,
            outcome_discarded: false,
            live_node_handed_back: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for n in self.node_ids() {
            for task in self.task_ids() {
                actions.push(Action::Claim(n, task));
                actions.push(Action::ClaimReplyLost(n, task));
            }
            for r in &s.nodes[n as usize].runs {
                let (task, run) = (r.task, r.run);
                actions.push(Action::Finish(n, task, run, Outcome::Succeeded));
                actions.push(Action::Finish(n, task, run, Outcome::Failed));
                actions.push(Action::WriteOutcome(n, task, run));
                actions.push(Action::WriteOutcomeReplyLost(n, task, run));
                actions.push(Action::ReplaySpool(n, task, run));
            }
            actions.extend([
                Action::Heartbeat(n),
                Action::TimePasses(n),
                Action::SelfFence(n),
                Action::HandBackKilled(n),
                Action::Resync(n),
                Action::LockGroup(n),
                Action::BecomeCoordinator(n),
                Action::DeposeStale(n),
                Action::RoundAct(n),
                Action::StepDown(n),
                Action::SchedulerTick(n),
                Action::Crash(n),
                Action::Hang(n),
                Action::Partition(n),
                Action::SessionsDropped(n),
                Action::Resume(n),
                Action::Heal(n),
                Action::Restart(n),
            ]);
            for d in self.node_ids() {
                actions.push(Action::RoundObserve(n, d));
            }
        }
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        self.step(s, action).filter(|next| next != s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("at most one coordinator acts per term", |_, s: &State| {
                !s.two_acted_in_a_term
            }),
            Property::always(
                "a coordinator acts only under the current term",
                |_, s: &State| !s.acted_in_old_term,
            ),
            Property::always(
                "an outcome is accepted at most once per run id",
                |_, s: &State| !s.accepted_twice,
            ),
            Property::always(
                "no outcome is accepted once a newer run id exists",
                |_, s: &State| !s.accepted_stale,
            ),
            Property::always(
                "with a live node, every task is final once nothing more happens",
                |m: &Protocol, s: &State| {
                    !m.settled(s)
                        || s.nodes.iter().all(|n| n.mode != Mode::Up)
                        || s.tasks
                            .iter()
                            .all(|t| matches!(t.state, TaskState::CS | TaskState::CF))
                },
            ),
            Property::always(
                "a node never hands back a run whose outcome it holds",
                |_, s: &State| !s.outcome_discarded,
            ),
            Property::always(
                "a round hands back only nodes the database shows dead",
                |_, s: &State| !s.live_node_handed_back,
            ),
            // Not vacuous: the model reaches the interesting places.
            Property::sometimes("a failover: a second term", |_, s: &State| {
                s.coordinator.is_some_and(|(t, _)| t >= 2)
            }),
            Property::sometimes(
                "a task re-run after its node was lost ends CS",
                |_, s: &State| {
                    s.tasks
                        .iter()
                        .any(|t| t.state == TaskState::CS && t.lost_reruns > 0)
                },
            ),
            Property::sometimes(
                "a spooled outcome waits while a newer run exists",
                |_, s: &State| {
                    s.nodes.iter().any(|n| {
                        n.runs.iter().any(|r| {
                            matches!(r.local, Local::Spooled(_))
                                && r.run < s.tasks[r.task as usize].issued
                        })
                    })
                },
            ),
        ]
    }
}
