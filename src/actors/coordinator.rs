//! The Coordinator (docs/design.md §3/§4): on every node, one per group it serves; active on one node.
//!
//! On its own dedicated connection (never the pool: the lock is session-scoped) it waits for the
//! group's advisory lock `(NS_GROUP, group_id)` — a blocking wait without `lock_timeout`, so a
//! follower sends nothing while the coordinator lives, raises no error on the server (the log
//! stays quiet), and wins the moment the coordinator's session ends. Meanwhile, every
//! `heartbeat_timeout / 2`, it checks on a pooled connection whether the lock's holder is hung
//! (its heartbeat older than `heartbeat_timeout`); then its sessions are terminated, which frees
//! the lock for the waiting session. The winner starts a new term
//! (`long_task.become_coordinator`) and runs rounds of `long_task.coordinate`: dead nodes
//! (liveness lock free, or heartbeat stale: sessions terminated first) have their tasks handed
//! back, every write under the term. A round runs when a watcher sees a node's liveness lock come
//! free (one blocked session per live node, up to `watch_sessions`: a crash is noticed at once),
//! when the poll of the live nodes beyond that cap (one `pg_locks` read every
//! `coordinator_interval`, only while there are such nodes) finds one's lock free, just after the earliest
//! heartbeat deadline (a hung node), and at least every `heartbeat_timeout` (30 s for a lone
//! node) — so an idle cluster of up to `watch_sessions + 1` nodes costs a query every few seconds,
//! and a larger one a cheap `pg_locks` read every `coordinator_interval` besides (the
//! coordinator's sessions stay bounded: docs/clustering.md, "Sessions"). Once a
//! minute it also writes the group's queue-depth sample for the console (`long_task.sample_queue`,
//! under the term). The Scheduler ticks only under the term.
//!
//! Steps down at once when its connection fails, a round fails or times out, the term is
//! superseded, or the node's own heartbeat is late (`NodeContext::may_coordinate`). Must never
//! act without a term, and never on a pooled connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::backoff;
use super::scheduler::SchedulerMsg;
use crate::db::{self, cluster, DbError};
use crate::node::NodeContext;

/// Messages of the Coordinator.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum CoordinatorMsg {
    /// Step down and stop (node shutdown).
    Stop,
    /// A node joined the group (notification `peer`): run a round to start watching it.
    PeerJoined,
}

#[derive(Debug, thiserror::Error)]
enum CoordinatorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

pub struct Coordinator {
    node: Arc<NodeContext>,
    /// Wakes the campaign for a round (a node joined).
    poke: mpsc::UnboundedSender<()>,
    poked: Option<mpsc::UnboundedReceiver<()>>,
}

impl Coordinator {
    pub fn new(node: Arc<NodeContext>) -> Self {
        let (poke, poked) = mpsc::unbounded_channel();
        Coordinator {
            node,
            poke,
            poked: Some(poked),
        }
    }
}

/// Publishes the node's term (None: not the coordinator) to the node and its Scheduler.
fn set_term(node: &NodeContext, term: Option<i64>) {
    let changed = {
        let mut standing = node.standing();
        std::mem::replace(&mut standing.term, term) != term
    };
    if changed {
        if let Some(s) = node.scheduler() {
            s.do_send(SchedulerMsg::Term(term));
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, CoordinatorError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CoordinatorError::Timeout(what)),
    }
}

/// Runs for coordinator forever: each pass waits for the lock, leads while it can, steps down.
async fn run(node: Arc<NodeContext>, mut poked: mpsc::UnboundedReceiver<()>) {
    let mut failures = 0u32;
    loop {
        let result = campaign(&node, &mut poked).await;
        set_term(&node, None);
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                warn!(error = %e, "coordinator connection failed; stepping down");
            }
        }
        tokio::time::sleep(backoff(failures).max(node.config.coordinator_interval)).await;
    }
}

/// One campaign on one connection; returns when this node steps down (Ok) or the connection fails.
async fn campaign(
    node: &NodeContext,
    poked: &mut mpsc::UnboundedReceiver<()>,
) -> Result<(), CoordinatorError> {
    let cfg = &node.config;
    let group = node.group_id;
    let me = node.worker_id;
    // A node that cannot heartbeat must not run for coordinator.
    while !node.may_coordinate() {
        tokio::time::sleep(cfg.coordinator_interval).await;
    }
    // The server notices a vanished client even while it waits for the lock.
    let client: Client = bounded(
        db::connect_budget(&node.database_url),
        "connecting",
        db::connect_dedicated_with(
            &node.database_url,
            &node.session_purpose("coordinator"),
            "-c client_connection_check_interval=500",
        ),
    )
    .await?;
    let wait = (cfg.heartbeat_timeout / 2).max(Duration::from_millis(200));
    // A round that takes longer than this means a dead connection (the work itself is a few ms).
    let round_limit = cfg.heartbeat_timeout;
    {
        let lock = cluster::wait_group_lock(&client, group);
        tokio::pin!(lock);
        loop {
            tokio::select! {
                won = &mut lock => {
                    won?;
                    break;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            if !node.may_coordinate() {
                return Ok(()); // drops the client: the server ends the wait
            }
            let deposed = bounded(round_limit, "checking the coordinator", async {
                let conn = node.pool.get().await?;
                cluster::depose_stale_coordinator(&conn, group, me, cfg.heartbeat_timeout).await
            })
            .await?;
            if let Some(worker) = deposed {
                warn!(
                    coordinator = worker,
                    "the coordinator's heartbeat is stale: its sessions were terminated"
                );
            }
        }
    }
    if !node.may_coordinate() {
        return Ok(()); // won the lock while our own heartbeat went late: give it up
    }
    let term = bounded(
        round_limit,
        "starting a term",
        cluster::become_coordinator(&client, group, me),
    )
    .await?;
    info!(
        term,
        group_id = group,
        "this node is the group's coordinator"
    );
    set_term(node, Some(term));

    let (freed_tx, mut freed_rx) = mpsc::unbounded_channel::<i64>();
    let mut watchers = Watchers::default();
    // The live nodes beyond `watch_sessions`: their liveness locks are read from `pg_locks`
    // every `coordinator_interval` instead of each costing a session.
    let mut polled: Vec<i64> = Vec::new();
    let mut poll = tokio::time::interval(cfg.coordinator_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round_at = tokio::time::Instant::now();
    let mut sample_at = tokio::time::Instant::now();
    loop {
        // Sleep until the earliest heartbeat deadline, a watcher's news, or the safety bound; or
        // until the console's queue-depth sample is due (once a minute, not a round).
        tokio::select! {
            _ = tokio::time::sleep_until(sample_at) => {
                sample_at = tokio::time::Instant::now() + QUEUE_SAMPLE_EVERY;
                let sampled = bounded(
                    round_limit,
                    "sampling the queue",
                    db::charts::sample_queue(&client, group, term),
                )
                .await?;
                if !sampled {
                    warn!(term, "no longer the coordinator (sampling the queue)");
                    return Ok(());
                }
                continue;
            }
            _ = tokio::time::sleep_until(round_at) => {}
            Some(worker) = freed_rx.recv() => {
                info!(term, worker_id = worker, "a node's liveness lock came free");
            }
            Some(()) = poked.recv() => {
                debug!(term, "a node joined the group");
            }
            _ = poll.tick(), if !polled.is_empty() => {
                let held = bounded(
                    round_limit,
                    "polling the liveness locks",
                    cluster::liveness_locks_held(&client, &polled),
                )
                .await?;
                if held >= polled.len() {
                    continue;
                }
                info!(term, polled = polled.len(), held, "a polled node's liveness lock is free");
            }
        }
        if !node.may_coordinate() {
            warn!(term, "own heartbeat is late: stepping down as coordinator");
            return Ok(());
        }
        let started = std::time::Instant::now();
        let round = bounded(
            round_limit,
            "the coordinator round",
            cluster::coordinate(&client, group, me, term, cfg.heartbeat_timeout),
        )
        .await?;
        crate::metrics::coordinator_round(group, started.elapsed().as_secs_f64());
        for action in &round.actions {
            if action.is_deposed() {
                warn!(term, detail = ?action.detail, "no longer the coordinator");
                return Ok(());
            }
            info!(
                term,
                kind = %action.kind,
                worker_id = ?action.worker_id,
                task_id = ?action.task_id,
                run_id = ?action.run_id,
                detail = ?action.detail,
                "coordinator action"
            );
        }
        if !round.reconnecting.is_empty() {
            debug!(term, nodes = ?round.reconnecting, "nodes not back since the server restarted or failed over");
        }
        polled = watchers.keep(node, &round.live, cfg.watch_sessions, &freed_tx);
        let deadlines: Vec<(i64, f64)> = round
            .live
            .iter()
            .chain(&round.reconnecting)
            .copied()
            .collect();
        round_at = tokio::time::Instant::now() + next_round_in(cfg, &deadlines);
    }
}

/// How often the coordinator writes its group's queue-depth sample (`long_task.queue_sample`,
/// the console's queue chart): one row per group and minute.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// A round at least this often while the group has no other live node (a node that joins
/// announces itself with `peer`; this bounds the cost of a missed announcement).
const LONE_ROUND: Duration = Duration::from_secs(30);

/// When the next round is due: just after the earliest heartbeat deadline of a live node, but
/// never sooner than `coordinator_interval` nor later than `heartbeat_timeout` (`LONE_ROUND`
/// with no live peer). A lock freed or a node joining meanwhile wakes the round at once.
fn next_round_in(cfg: &crate::config::NodeConfig, live: &[(i64, f64)]) -> Duration {
    let bound = if live.is_empty() {
        LONE_ROUND.max(cfg.heartbeat_timeout)
    } else {
        cfg.heartbeat_timeout
    };
    let earliest = live
        .iter()
        .map(|&(_, due_in)| due_in + 0.05)
        .fold(bound.as_secs_f64(), f64::min)
        .max(0.0);
    Duration::from_secs_f64(earliest).max(cfg.coordinator_interval)
}

/// Up to `watch_sessions` watchers, one per watched live node of the group: a task blocked on a
/// dedicated session in a shared request for the node's liveness lock, which the server grants
/// the moment the node's session ends. Death by crash or kill is thus noticed at once, with no
/// query while nothing happens. The live nodes beyond the cap are polled (`pg_locks`, every
/// `coordinator_interval`), so the coordinator's sessions stay bounded however large the fleet.
#[derive(Default)]
struct Watchers {
    tasks: HashMap<i64, tokio::task::JoinHandle<()>>,
}

impl Watchers {
    /// Watches at most `cap` of the given live nodes — those already watched first, so a watcher
    /// lives as long as its node (one that ended, e.g. on a lost connection, is started again) —
    /// and returns the live nodes left to poll.
    fn keep(
        &mut self,
        node: &NodeContext,
        live: &[(i64, f64)],
        cap: usize,
        freed: &mpsc::UnboundedSender<i64>,
    ) -> Vec<i64> {
        let (watched, polled) = split_watched(
            self.tasks
                .iter()
                .filter(|(_, task)| !task.is_finished())
                .map(|(w, _)| *w),
            live,
            cap,
        );
        self.tasks.retain(|worker, task| {
            let keep = !task.is_finished() && watched.contains(worker);
            if !keep {
                task.abort();
            }
            keep
        });
        for worker in watched {
            self.tasks.entry(worker).or_insert_with(|| {
                let url = node.database_url.clone();
                let purpose = node.session_purpose(&format!("watch w{worker}"));
                let freed = freed.clone();
                tokio::spawn(async move {
                    match watch(&url, &purpose, worker).await {
                        Ok(()) => {
                            let _ = freed.send(worker);
                        }
                        Err(e) => debug!(worker_id = worker, error = %e, "watcher ended"),
                    }
                })
            });
        }
        polled
    }
}

/// Which live nodes get a watcher session (at most `cap`: those watched now first, then in the
/// round's order) and which are polled (the rest).
fn split_watched(
    watching: impl Iterator<Item = i64>,
    live: &[(i64, f64)],
    cap: usize,
) -> (Vec<i64>, Vec<i64>) {
    let watching: Vec<i64> = watching.collect();
    let (mut watched, rest): (Vec<i64>, Vec<i64>) = live
        .iter()
        .map(|&(w, _)| w)
        .partition(|w| watching.contains(w));
    // more watched than the cap: the surplus is polled, never dropped
    let mut polled = watched.split_off(cap.min(watched.len()));
    let room = cap - watched.len();
    for (i, w) in rest.into_iter().enumerate() {
        if i < room {
            watched.push(w);
        } else {
            polled.push(w);
        }
    }
    (watched, polled)
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

async fn watch(url: &str, purpose: &str, worker: i64) -> Result<(), DbError> {
    let client = tokio::time::timeout(
        db::connect_budget(url),
        db::connect_dedicated_with(url, purpose, "-c client_connection_check_interval=500"),
    )
    .await
    .map_err(|_| DbError::Timeout("connecting a watcher"))??;
    cluster::watch_liveness_lock(&client, worker).await
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let node = self.node.clone();
        if let Some(poked) = self.poked.take() {
            ctx.spawn(run(node, poked).into_actor(self));
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // the campaign (and its connection, hence the lock) is dropped with the context
        set_term(&self.node, None);
    }
}

impl Handler<CoordinatorMsg> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: CoordinatorMsg, ctx: &mut Self::Context) {
        match msg {
            CoordinatorMsg::Stop => ctx.stop(),
            CoordinatorMsg::PeerJoined => {
                let _ = self.poke.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    fn cfg() -> NodeConfig {
        NodeConfig {
            heartbeat_timeout: Duration::from_secs(5),
            coordinator_interval: Duration::from_millis(250),
            ..NodeConfig::default()
        }
    }

    #[test]
    fn watchers_are_capped_and_kept_for_the_nodes_they_watch() {
        let live: Vec<(i64, f64)> = (1..=6).map(|w| (w, 1.0)).collect();
        // a cold start: the first `cap` in the round's order, the rest polled
        assert_eq!(
            split_watched([].into_iter(), &live, 2),
            (vec![1, 2], vec![3, 4, 5, 6])
        );
        // nodes already watched keep their watcher; a dead one's (9) is not counted
        assert_eq!(
            split_watched([5, 9].into_iter(), &live, 2),
            (vec![5, 1], vec![2, 3, 4, 6])
        );
        // more watched than the cap: the surplus is polled, never dropped
        assert_eq!(
            split_watched([4, 5, 6].into_iter(), &live, 2),
            (vec![4, 5], vec![6, 1, 2, 3])
        );
        // cap 0 polls everyone; a cap above the fleet watches everyone
        assert_eq!(split_watched([].into_iter(), &live, 0).0, Vec::<i64>::new());
        assert_eq!(split_watched([].into_iter(), &live, 8).1, Vec::<i64>::new());
    }

    #[test]
    fn the_next_round_follows_the_earliest_heartbeat_deadline_within_bounds() {
        let c = cfg();
        // just after the earliest deadline
        assert_eq!(
            next_round_in(&c, &[(1, 3.0), (2, 1.2)]),
            Duration::from_secs_f64(1.25)
        );
        // never sooner than coordinator_interval, never later than heartbeat_timeout
        assert_eq!(next_round_in(&c, &[(1, 0.0)]), Duration::from_millis(250));
        assert_eq!(next_round_in(&c, &[(1, 60.0)]), Duration::from_secs(5));
        // a lone coordinator only waits for news
        assert_eq!(next_round_in(&c, &[]), LONE_ROUND);
    }
}
