//! The steps of the protocol model: `Protocol::step` gives the successor of a state by one
//! action, each guarded exactly as the SQL function (or node code) named in its comment is.
//! `complete_run` and `hand_back` are the two writes that end a run, shared by several steps.

use super::model::{
    Action, Local, LocalRun, Mode, Node, Outcome, Protocol, State, TaskRow, TaskState, WorkerRow,
};
use stateright::Model;

impl State {
    fn local(&self, n: u8, task: u8, run: u8) -> Option<Local> {
        self.nodes[n as usize]
            .runs
            .iter()
            .find(|r| r.task == task && r.run == run)
            .map(|r| r.local)
    }

    fn set_local(&mut self, n: u8, task: u8, run: u8, local: Option<Local>) {
        let runs = &mut self.nodes[n as usize].runs;
        runs.retain(|r| !(r.task == task && r.run == run));
        if let Some(local) = local {
            runs.push(LocalRun { task, run, local });
            runs.sort();
        }
    }

    /// `long_task.terminate_node_sessions(d)`: every session of node `d` ends (its liveness lock,
    /// its coordinator session with the group lock and a round in flight on it, its listener).
    fn terminate_sessions(&mut self, d: u8) {
        self.workers[d as usize].liveness_lock = false;
        if self.group_lock == Some(d) {
            self.group_lock = None;
        }
        let node = &mut self.nodes[d as usize];
        node.round = None;
        if node.mode != Mode::Down {
            node.resync_due = true;
        }
    }

    fn record_act(&mut self, term: u8, n: u8) {
        match self.acted {
            Some((t, m)) if t == term && m != n => self.two_acted_in_a_term = true,
            Some((t, _)) if t > term => self.acted_in_old_term = true,
            _ => self.acted = Some((term, n)),
        }
        if self.coordinator.map(|(current, _)| current) != Some(term) {
            self.acted_in_old_term = true;
        }
    }
}

impl Protocol {
    pub fn node_ids(&self) -> impl Iterator<Item = u8> {
        0..self.nodes
    }

    pub fn task_ids(&self) -> impl Iterator<Item = u8> {
        0..self.tasks
    }

    /// `long_task.complete_runs`: the outcome of run `run` is written only
    /// `WHERE x.id = u.id AND x.run_id = u.run_id` and `old.state_id IN ('AE', 'AC')`; a failure
    /// with attempts left (`t.attempt < t.max_attempts`) goes back to `AW`.
    fn complete_run(&self, s: &mut State, task: u8, run: u8, outcome: Outcome) {
        let row = s.tasks[task as usize];
        let run_matches = self.skip_run_id_check || row.run == Some(run);
        if !(run_matches && row.state == TaskState::AE) {
            return; // fenced: nothing written
        }
        let bit = 1u8 << run;
        if s.accepted[task as usize] & bit != 0 {
            s.accepted_twice = true;
        }
        if run < row.issued {
            s.accepted_stale = true;
        }
        s.accepted[task as usize] |= bit;
        let t = &mut s.tasks[task as usize];
        match outcome {
            Outcome::Failed if t.attempt < self.max_attempts => requeue(t),
            Outcome::Failed => t.state = TaskState::CF,
            Outcome::Succeeded => t.state = TaskState::CS,
        }
    }

    /// `long_task.hand_back(p_worker_id, …, p_ids, p_run_ids)`: only rows
    /// `WHERE t.worker_id = p_worker_id AND t.state_id IN ('AE', 'AC')` and, when pairs are
    /// given, `(t.id, t.run_id) IN (pairs)`; back to `AW` while
    /// `t.lost_reruns < max_lost_reruns` (counting one), else `CF` 'worker lost'.
    fn hand_back(&self, s: &mut State, worker: u8, pairs: Option<&[(u8, u8)]>) -> Vec<(u8, u8)> {
        let mut moved = Vec::new();
        for task in self.task_ids() {
            let t = &mut s.tasks[task as usize];
            let Some(run) = t.run else { continue };
            if t.worker != Some(worker) || t.state != TaskState::AE {
                continue;
            }
            if pairs.is_some_and(|p| !p.contains(&(task, run))) {
                continue;
            }
            if t.lost_reruns < self.max_lost_reruns {
                t.lost_reruns += 1;
                requeue(t);
            } else {
                t.state = TaskState::CF;
            }
            moved.push((task, run));
        }
        moved
    }

    /// May the node coordinate (`NodeContext::may_coordinate`: its own heartbeat is current)?
    fn may_coordinate(n: &Node) -> bool {
        !n.late && !n.fenced
    }

    fn candidate(&self, s: &State, d: u8) -> bool {
        s.workers[d as usize].active
            || s.tasks
                .iter()
                .any(|t| t.worker == Some(d) && t.state == TaskState::AE)
    }

    /// The successor of `s` by `action`, or None when the action's guard does not hold.
    pub fn step(&self, s: &State, action: Action) -> Option<State> {
        let mut s = s.clone();
        let faults_left = s.faults < self.max_faults;
        match action {
            // long_task.claim: `x.state_id = 'AW' AND (x.worker_id IS NULL OR x.worker_id = p_worker_id)`;
            // a new run_id and attempt + 1. Each node has one slot (`max_tasks = 1`). The
            // Dispatcher claims nothing while fenced, and starts nothing a claim returns once its
            // heartbeat is late (it hands it back: the same as a claim not made).
            Action::Claim(n, task) | Action::ClaimReplyLost(n, task) => {
                let node = &s.nodes[n as usize];
                let t = s.tasks[task as usize];
                let lost = matches!(action, Action::ClaimReplyLost(..));
                let busy = node.runs.iter().any(|r| r.local == Local::Running);
                if node.mode != Mode::Up
                    || node.fenced
                    || node.late
                    || busy
                    || t.state != TaskState::AW
                {
                    return None;
                }
                if lost && !(self.lost_claim_replies && faults_left) {
                    return None;
                }
                let run = t.issued + 1;
                s.tasks[task as usize] = TaskRow {
                    state: TaskState::AE,
                    worker: Some(n),
                    run: Some(run),
                    issued: run,
                    attempt: t.attempt + 1,
                    ..t
                };
                if lost {
                    s.faults += 1;
                } else {
                    s.set_local(n, task, run, Some(Local::Running));
                }
            }
            // The process exits (the node sees it while it runs, cut off or not).
            Action::Finish(n, task, run, outcome) => {
                let mode = s.nodes[n as usize].mode;
                if !matches!(mode, Mode::Up | Mode::Partitioned)
                    || s.local(n, task, run) != Some(Local::Running)
                    || (outcome == Outcome::Failed && self.max_attempts < 2)
                {
                    return None;
                }
                // cut off, the write fails at once and the batch goes to the spool
                let local = if mode == Mode::Up {
                    Local::Done(outcome)
                } else {
                    Local::Spooled(outcome)
                };
                s.set_local(n, task, run, Some(local));
            }
            // Outcomes actor: long_task.complete_runs (see `complete_run` for the guard). A lost
            // reply after the commit makes the node spool what was written.
            Action::WriteOutcome(n, task, run) | Action::WriteOutcomeReplyLost(n, task, run) => {
                let lost = matches!(action, Action::WriteOutcomeReplyLost(..));
                let Some(Local::Done(outcome)) = s.local(n, task, run) else {
                    return None;
                };
                if s.nodes[n as usize].mode != Mode::Up || (lost && !faults_left) {
                    return None;
                }
                self.complete_run(&mut s, task, run, outcome);
                if lost {
                    s.faults += 1;
                    s.set_local(n, task, run, Some(Local::Spooled(outcome)));
                } else {
                    s.set_local(n, task, run, None);
                }
            }
            // outcomes::replay_spool: long_task.complete_runs under the same run_id guard; the
            // file goes whatever the database answered.
            Action::ReplaySpool(n, task, run) => {
                let Some(Local::Spooled(outcome)) = s.local(n, task, run) else {
                    return None;
                };
                if s.nodes[n as usize].mode != Mode::Up {
                    return None;
                }
                self.complete_run(&mut s, task, run, outcome);
                s.set_local(n, task, run, None);
            }
            // Membership: pg_try_advisory_lock(ns_node(), id) when its session was lost, then
            // `UPDATE long_task.worker SET heartbeat_at = now(), active = true WHERE id = $1`;
            // a restored heartbeat lifts the self-fence.
            Action::Heartbeat(n) => {
                if s.nodes[n as usize].mode != Mode::Up {
                    return None;
                }
                s.workers[n as usize] = WorkerRow {
                    liveness_lock: true,
                    fresh: true,
                    beat_here: true,
                    active: true,
                };
                let node = &mut s.nodes[n as usize];
                node.late = false;
                node.fenced = false;
            }
            // Time passes for a node that does not beat (hung, cut off, crashed): its
            // `heartbeat_at` gets older than heartbeat_timeout, and so does its own last
            // successful heartbeat (`NodeContext::heartbeat_age`, the self-fence's clock).
            Action::TimePasses(n) => {
                let node = &mut s.nodes[n as usize];
                if node.mode == Mode::Up {
                    return None;
                }
                node.late = node.mode != Mode::Down;
                s.workers[n as usize].fresh = false;
            }
            // Membership::check_fence → Dispatcher Fence: kill every process, claim nothing.
            Action::SelfFence(n) => {
                let node = &mut s.nodes[n as usize];
                if !matches!(node.mode, Mode::Up | Mode::Partitioned) || !node.late || node.fenced {
                    return None;
                }
                node.fenced = true;
                for r in node.runs.iter_mut().filter(|r| r.local == Local::Running) {
                    r.local = Local::Killed;
                }
            }
            // Outcomes Release after Unfence: long_task.hand_back(me, 'self-fenced', pairs).
            Action::HandBackKilled(n) => {
                let node = &s.nodes[n as usize];
                let pairs: Vec<(u8, u8)> = node
                    .runs
                    .iter()
                    .filter(|r| r.local == Local::Killed)
                    .map(|r| (r.task, r.run))
                    .collect();
                if node.mode != Mode::Up || node.fenced || pairs.is_empty() {
                    return None;
                }
                self.hand_back(&mut s, n, Some(&pairs));
                s.nodes[n as usize]
                    .runs
                    .retain(|r| r.local != Local::Killed);
            }
            // Dispatcher::hand_back_unknown_runs at a listener reconnect: queries::unknown_runs
            // (`worker_id = $1 AND state_id IN ('AE','AC') AND id <> ALL (running ids)`), minus
            // runs in `running()`, then long_task.hand_back(me, 'not running on its node', pairs).
            // `running()` loses a run when its process ends, before its outcome is written.
            Action::Resync(n) => {
                let node = &s.nodes[n as usize];
                if node.mode != Mode::Up || !node.resync_due {
                    return None;
                }
                let known = |task: u8, run: u8| {
                    node.runs.iter().any(|r| {
                        r.task == task
                            && (r.local == Local::Running
                                || (!self.resync_discards_held_outcomes && r.run == run))
                    })
                };
                let unknown: Vec<(u8, u8)> = self
                    .task_ids()
                    .filter_map(|task| {
                        let t = s.tasks[task as usize];
                        let run = t.run?;
                        (t.worker == Some(n) && t.state == TaskState::AE && !known(task, run))
                            .then_some((task, run))
                    })
                    .collect();
                let moved = self.hand_back(&mut s, n, Some(&unknown));
                if moved.iter().any(|&(task, run)| {
                    matches!(
                        s.local(n, task, run),
                        Some(Local::Done(_) | Local::Spooled(_))
                    )
                }) {
                    s.outcome_discarded = true;
                }
                s.nodes[n as usize].resync_due = false;
            }
            // pg_advisory_lock(ns_group(), group) on the coordinator session, granted when free
            // (a node that hangs or is cut off once granted: this step, then the fault); a node
            // waits for it only while it may coordinate (`campaign`'s first loop).
            Action::LockGroup(n) => {
                let node = &s.nodes[n as usize];
                if s.group_lock.is_some()
                    || node.mode != Mode::Up
                    || node.term.is_some()
                    || !Self::may_coordinate(node)
                {
                    return None;
                }
                s.group_lock = Some(n);
                // the session that won is new (as far as the model can tell): no node beat since
                // its backend_start
                for w in &mut s.workers {
                    w.beat_here = false;
                }
            }
            // long_task.become_coordinator: `IF NOT long_task.holds_group_lock(p_group_id)
            // THEN RAISE`; `term = c.term + 1`. The node first checks `may_coordinate`.
            Action::BecomeCoordinator(n) => {
                let node = &s.nodes[n as usize];
                if node.mode != Mode::Up
                    || s.group_lock != Some(n)
                    || node.term.is_some()
                    || !Self::may_coordinate(node)
                {
                    return None;
                }
                let term = s.coordinator.map_or(1, |(t, _)| t + 1);
                s.coordinator = Some((term, n));
                s.nodes[n as usize].term = Some(term);
            }
            // long_task.depose_stale_coordinator, by a waiting node: the holder `h` of the group
            // lock, `holder <> p_by_worker_id`, and NOT EXISTS a worker row `w.id = holder AND
            // w.heartbeat_at >= now() - timeout` → terminate_node_sessions(holder).
            Action::DeposeStale(n) => {
                let node = &s.nodes[n as usize];
                let h = s.group_lock?;
                if node.mode != Mode::Up
                    || node.term.is_some()
                    || !Self::may_coordinate(node)
                    || h == n
                    || s.workers[h as usize].fresh
                {
                    return None;
                }
                s.terminate_sessions(h);
            }
            // long_task.coordinate, its read: `holds_group_lock(p_group_id)` and a coordinator
            // row `c.term = p_term AND c.worker_id = p_worker_id`; a candidate `c.id <>
            // p_worker_id` (an active worker of the group, or the worker of an AE/AC task) that
            // is dead: its heartbeat stale, or `NOT (c.id = ANY (live))` (liveness lock free)
            // unless `w.heartbeat_at < session_start` ('reconnecting': it has not beaten on this
            // server since a restart or failover, dead only once stale).
            Action::RoundObserve(c, d) => {
                let node = &s.nodes[c as usize];
                let term = node.term?;
                let w = s.workers[d as usize];
                let term_ok = self.skip_term_check || s.coordinator == Some((term, c));
                if node.mode != Mode::Up
                    || node.round.is_some()
                    || s.group_lock != Some(c)
                    || !term_ok
                    || c == d
                    || !self.candidate(&s, d)
                    || alive(w)
                {
                    return None;
                }
                s.nodes[c as usize].round = Some((term, d, !w.liveness_lock));
            }
            // long_task.coordinate, its writes, run by the server whatever the client does now:
            // `SELECT … FROM long_task.coordinator c WHERE c.term = p_term AND c.worker_id =
            // p_worker_id FOR UPDATE` (else 'deposed'); the node's worker row locked and its
            // liveness re-read (it may have come back since the read); a live session is fenced
            // first (terminate_node_sessions); `UPDATE worker SET active = false`; hand_back(d).
            Action::RoundAct(c) => {
                let (term, d, lock_free) = s.nodes[c as usize].round?;
                if s.group_lock != Some(c) {
                    return None; // its session ended: the transaction was rolled back
                }
                s.nodes[c as usize].round = None;
                if !self.skip_term_check && s.coordinator != Some((term, c)) {
                    return Some(s); // 'deposed': nothing written
                }
                // the re-check: `PERFORM … FROM long_task.worker x WHERE x.id = w.id FOR UPDATE`,
                // then a fresh heartbeat and a held liveness lock mean it came back: 'live'
                if alive(s.workers[d as usize]) {
                    if !self.round_acts_on_its_first_read {
                        return Some(s);
                    }
                    s.live_node_handed_back = true;
                }
                s.record_act(term, c);
                if !lock_free {
                    s.terminate_sessions(d);
                }
                s.workers[d as usize].active = false;
                self.hand_back(&mut s, d, None);
            }
            // The Coordinator steps down when its own heartbeat is late, its session (the group
            // lock) is gone or its term is superseded; dropping its client ends the session on
            // the server, unless the node is cut off (then the session lingers).
            Action::StepDown(n) => {
                let node = &s.nodes[n as usize];
                let holds = s.group_lock == Some(n);
                // (cut off, its next round times out: it steps down whatever it would read)
                let cut_off = node.mode == Mode::Partitioned;
                let must = match node.term {
                    Some(t) => cut_off || node.late || !holds || s.coordinator != Some((t, n)),
                    None => holds && node.late,
                };
                if !matches!(node.mode, Mode::Up | Mode::Partitioned) || !must {
                    return None;
                }
                if holds && node.mode == Mode::Up {
                    s.group_lock = None;
                }
                let node = &mut s.nodes[n as usize];
                node.term = None;
                node.round = None;
            }
            // long_task.scheduler_tick_as (a pooled connection): `c.term = p_term AND
            // c.worker_id = p_worker_id FOR SHARE`, else fired = -1 and nothing happens.
            Action::SchedulerTick(n) => {
                let node = &s.nodes[n as usize];
                let term = node.term?;
                let term_ok = self.skip_term_check || s.coordinator == Some((term, n));
                if node.mode != Mode::Up || !term_ok {
                    return None;
                }
                s.record_act(term, n);
            }
            Action::Crash(n) => {
                if s.nodes[n as usize].mode == Mode::Down || !faults_left {
                    return None;
                }
                s.faults += 1;
                s.terminate_sessions(n);
                let node = &mut s.nodes[n as usize];
                *node = Node {
                    mode: Mode::Down,
                    late: false,
                    fenced: false,
                    term: None,
                    runs: node
                        .runs
                        .iter()
                        .copied()
                        .filter(|r| matches!(r.local, Local::Spooled(_)))
                        .collect(),
                    resync_due: false,
                    round: None,
                };
            }
            Action::Hang(n) | Action::Partition(n) => {
                if s.nodes[n as usize].mode != Mode::Up || !faults_left {
                    return None;
                }
                s.faults += 1;
                s.nodes[n as usize].mode = if matches!(action, Action::Hang(_)) {
                    Mode::Hung
                } else {
                    Mode::Partitioned
                };
            }
            // The server ends a cut-off node's sessions itself: its keepalives and
            // tcp_user_timeout (db::connect, about 4 s) give up on the silent client.
            Action::SessionsDropped(n) => {
                let has_session = s.workers[n as usize].liveness_lock || s.group_lock == Some(n);
                if s.nodes[n as usize].mode != Mode::Partitioned || !has_session {
                    return None;
                }
                s.terminate_sessions(n);
            }
            Action::Resume(n) => {
                let node = &mut s.nodes[n as usize];
                if node.mode != Mode::Hung {
                    return None;
                }
                node.mode = Mode::Up;
            }
            Action::Heal(n) => {
                let node = &mut s.nodes[n as usize];
                if node.mode != Mode::Partitioned {
                    return None;
                }
                node.mode = Mode::Up;
                node.resync_due = true;
            }
            // node::prepare: pg_try_advisory_lock(ns_node(), id), register (active, heartbeat),
            // replay the spool (complete_runs, run_id-guarded), then
            // long_task.hand_back(me, 'node restarted') of every AE/AC row still its own.
            Action::Restart(n) => {
                if s.nodes[n as usize].mode != Mode::Down {
                    return None;
                }
                s.workers[n as usize] = WorkerRow {
                    liveness_lock: true,
                    fresh: true,
                    beat_here: true,
                    active: true,
                };
                for r in std::mem::take(&mut s.nodes[n as usize].runs) {
                    if let Local::Spooled(outcome) = r.local {
                        self.complete_run(&mut s, r.task, r.run, outcome);
                    }
                }
                self.hand_back(&mut s, n, None);
                s.nodes[n as usize].mode = Mode::Up;
            }
        }
        Some(s)
    }

    /// No progress step changes the state: only faults or recoveries could.
    pub fn settled(&self, s: &State) -> bool {
        let mut actions = Vec::new();
        self.actions(s, &mut actions);
        actions
            .into_iter()
            .filter(Action::is_progress)
            .all(|a| self.step(s, a).is_none_or(|next| next == *s))
    }
}

/// What `long_task.coordinate` counts as alive: a fresh heartbeat and the liveness lock held, or
/// a fresh heartbeat from before the coordinator's session began ('reconnecting').
fn alive(w: WorkerRow) -> bool {
    w.fresh && (w.liveness_lock || !w.beat_here)
}

/// Back to `AW`: the state-machine trigger clears `run_id` and (unpinned) `worker_id`.
fn requeue(t: &mut TaskRow) {
    t.state = TaskState::AW;
    t.worker = None;
    t.run = None;
}
