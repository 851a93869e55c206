//! A model of the cluster protocol (election, heartbeats, fencing by term and run id, hand-back,
//! the outcome spool), checked exhaustively by `stateright`'s breadth-first checker. The model
//! (`protocol_model/model.rs`) mirrors the guards of the SQL functions; docs/clustering.md
//! ("The protocol, model-checked") maps each action to its function and `WHERE` clause.
//!
//! Safety: at most one coordinator acts per term, and only under the current term; an outcome is
//! accepted at most once per run id and never once a newer run id exists. Liveness, stated as
//! the checker can (its `eventually` needs acyclic paths and it has no fairness): in every
//! reachable state where no progress step is left (only faults or recoveries could change it)
//! and some node is up, every task is final. The tests that break a guard (the term check, the
//! run-id check) show the checker finds the counterexample and print it.

mod protocol_model {
    pub mod model;
    pub mod steps;
}

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use protocol_model::model::{Action, Protocol, State};
use stateright::{Checker, HasDiscoveries, Model};

/// The properties the protocol promises (the list).
const PROMISED: [&str; 5] = [
    "at most one coordinator acts per term",
    "a coordinator acts only under the current term",
    "an outcome is accepted at most once per run id",
    "no outcome is accepted once a newer run id exists",
    "with a live node, every task is final once nothing more happens",
];

/// Examples the checker must find, or the model never got where the properties matter.
const REACHED: [&str; 3] = [
    "a failover: a second term",
    "a task re-run after its node was lost ends CS",
    "a spooled outcome waits while a newer run exists",
];

/// Runs the checker over every reachable state and prints what it explored.
fn check_all(model: Protocol, label: &str) -> impl Checker<Protocol> {
    let started = Instant::now();
    let checker = model.checker().spawn_bfs().join();
    println!(
        "{label}: {} states ({} unique), max depth {}, {:.2} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checker
}

/// Runs the checker until `property` has a counterexample (BFS: a shortest one), prints the path
/// and returns it.
fn counterexample(model: Protocol, property: &'static str) -> Vec<String> {
    let started = Instant::now();
    let checker = model
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("the checker found no counterexample of {property:?}"));
    println!(
        "counterexample of {property:?} after {} unique states ({:.2} s):\n{path}last state: {:#?}",
        checker.unique_state_count(),
        started.elapsed().as_secs_f64(),
        path.last_state()
    );
    path.into_actions()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect()
}

fn assert_promises_hold(checker: &impl Checker<Protocol>) {
    for name in PROMISED {
        if let Some(path) = checker.discovery(name) {
            panic!(
                "{name:?} is violated:\n{path}last state: {:#?}",
                path.last_state()
            );
        }
    }
    for name in REACHED {
        assert!(
            checker.discovery(name).is_some(),
            "the model never reaches {name:?}: the properties hold vacuously"
        );
    }
}

/// The defect d3b652b fixed (Dispatcher::hand_back_unknown_runs): see the test below.
const DISCARDS_OUTCOMES: &str = "a node never hands back a run whose outcome it holds";
/// What READ COMMITTED allowed the round before this branch's fix (see the test below).
const HANDS_BACK_LIVE: &str = "a round hands back only nodes the database shows dead";

#[test]
fn two_nodes_keep_every_promise_through_a_fault() {
    let checker = check_all(Protocol::default(), "2 nodes, 2 tasks, 1 fault");
    assert_promises_hold(&checker);
    for name in [DISCARDS_OUTCOMES, HANDS_BACK_LIVE] {
        if let Some(path) = checker.discovery(name) {
            panic!("{name:?} is violated:\n{path}");
        }
    }
}

/// 3 nodes: about 600,000 states, a minute or two in a debug build — run with `--ignored`.
#[test]
#[ignore]
fn three_nodes_keep_every_promise_through_a_fault() {
    let model = Protocol {
        nodes: 3,
        ..Protocol::default()
    };
    let checker = check_all(model, "3 nodes, 2 tasks, 1 fault");
    assert_promises_hold(&checker);
}

#[test]
fn without_the_term_check_a_deposed_coordinator_acts_in_an_old_term() {
    let path = counterexample(
        Protocol {
            skip_term_check: true,
            ..Protocol::default()
        },
        "a coordinator acts only under the current term",
    );
    assert!(
        path.iter().any(|a| a.starts_with("BecomeCoordinator")),
        "a second coordinator was elected on the way: {path:?}"
    );
}

#[test]
fn without_the_run_id_check_a_stale_outcome_is_accepted() {
    counterexample(
        Protocol {
            skip_run_id_check: true,
            ..Protocol::default()
        },
        "no outcome is accepted once a newer run id exists",
    );
}

/// The defect d3b652b fixed in `Dispatcher::hand_back_unknown_runs`, found by this model too: a
/// run left `running()` when its process ended, before its outcome was written. Cut off, the
/// outcome went to the spool; at the listener's reconnect the resync found the row still `AE` on
/// this node, "unknown", and handed it back before the spool's replay, which was then fenced: a
/// finished run's outcome discarded and the task run again. (Main now hands back through the
/// Outcomes actor, sparing the runs whose outcome it holds: the model's default.)
#[test]
fn the_old_resync_hands_back_a_finished_run_whose_outcome_waits_in_the_spool() {
    let path = counterexample(
        Protocol {
            resync_discards_held_outcomes: true,
            ..Protocol::default()
        },
        DISCARDS_OUTCOMES,
    );
    assert!(path.iter().any(|a| a.starts_with("Resync")), "{path:?}");
}

/// A liveness gap: a claim that commits but whose reply is lost (its pooled connection dropped)
/// leaves the task `AE` on a live node that does not run it. Nothing moves it until that node's
/// listener reconnects, it restarts or it dies: the coordinator sees a live node.
#[test]
fn a_lost_claim_reply_leaves_a_task_running_nowhere() {
    counterexample(
        Protocol {
            lost_claim_replies: true,
            ..Protocol::default()
        },
        "with a live node, every task is final once nothing more happens",
    );
}

/// The round before this branch's fix: `long_task.coordinate` read pg_locks and the worker rows
/// once, then handed back with later statements (after a `FOR UPDATE` that can wait for a
/// scheduler tick): a node that restarted (or beat again) and claimed in between had its new run
/// handed back although the database showed it alive. Fencing held, but the run was lost and a
/// lost re-run counted. tests/coordinator_round.rs shows it on a real database.
#[test]
fn the_old_round_hands_back_a_node_that_came_back_during_it() {
    let path = counterexample(
        Protocol {
            round_acts_on_its_first_read: true,
            ..Protocol::default()
        },
        HANDS_BACK_LIVE,
    );
    assert!(
        path.iter().any(|a| a.starts_with("RoundObserve")),
        "{path:?}"
    );
}

/// What makes the liveness property above a liveness property: no cycle of progress steps, so
/// once faults stop every fair run reaches a state with no progress step left (and there every
/// task is final). Explores the reachable states itself and looks for a cycle of progress steps
/// (a depth-first search with three colours) — the same states as the main check, a second time.
#[test]
fn progress_steps_cannot_loop_forever() {
    let model = Protocol::default();
    let started = Instant::now();
    let mut index: HashMap<State, u32> = HashMap::new();
    let mut states: Vec<State> = Vec::new();
    let mut progress: Vec<Vec<u32>> = Vec::new();
    for s in model.init_states() {
        index.insert(s.clone(), 0);
        states.push(s);
    }
    let mut actions = Vec::new();
    let mut next = 0;
    while next < states.len() {
        let s = states[next].clone();
        model.actions(&s, &mut actions);
        let mut edges = Vec::new();
        for a in actions.drain(..) {
            let Some(t) = model.next_state(&s, a) else {
                continue;
            };
            let id = match index.get(&t) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(states.len()).expect("fewer than 2^32 states");
                    index.insert(t.clone(), id);
                    states.push(t);
                    id
                }
            };
            if Action::is_progress(&a) {
                edges.push(id);
            }
        }
        progress.push(edges);
        next += 1;
    }
    // 0 = unseen, 1 = on the stack, 2 = done
    let mut colour = vec![0u8; states.len()];
    for root in 0..states.len() {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (v, ref mut i)) = stack.last_mut() {
            if let Some(&w) = progress[v].get(*i) {
                *i += 1;
                let w = w as usize;
                match colour[w] {
                    0 => {
                        colour[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(u, _)| u == w).unwrap_or(0);
                        let cycle: Vec<&State> =
                            stack[from..].iter().map(|&(u, _)| &states[u]).collect();
                        panic!("a cycle of progress steps through {cycle:#?}");
                    }
                    _ => {}
                }
            } else {
                colour[v] = 2;
                stack.pop();
            }
        }
    }
    println!(
        "progress steps: no cycle among {} states ({:.2} s)",
        states.len(),
        started.elapsed().as_secs_f64()
    );
}
