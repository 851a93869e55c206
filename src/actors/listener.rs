//! The Listener: one direct `tokio_postgres` connection (never pooled: bb8 drops notifications)
//! that LISTENs on the group's channel and on `long_task_worker`, and turns notifications into
//! typed messages for the Dispatcher, Scheduler and Membership.
//!
//! Notifications are hints: the connection is checked with a bounded query every
//! `listener_check_interval`; on any loss it reconnects with back-off (each connect bounded by
//! `db::connect_budget`: a half-open partition accepts and never answers), LISTENs again and
//! asks every actor to resync from the tables (notifications sent while disconnected are gone).
//! Must never act on a notification's payload beyond routing it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::backoff;
use super::coordinator::CoordinatorMsg;
use super::dispatcher::DispatcherMsg;
use super::membership::MembershipMsg;
use super::outcomes::OutcomesMsg;
use super::scheduler::SchedulerMsg;
use crate::db::codes::{group_channel, GroupEvent, WORKER_CHANNEL};
use crate::db::{self, DbError, Notice};
use crate::node::NodeContext;

/// Messages of the Listener.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ListenerMsg {
    /// The connection ended (or failed its check): connect again.
    Lost(String),
}

pub struct Listener {
    node: Arc<NodeContext>,
    client: Option<Arc<Client>>,
    tx: mpsc::UnboundedSender<Notice>,
    rx: Option<mpsc::UnboundedReceiver<Notice>>,
    connecting: bool,
    failures: u32,
    /// Incremented on every new connection, so a stale "lost" report is ignored.
    generation: u64,
}

impl Listener {
    pub fn new(node: Arc<NodeContext>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Listener {
            node,
            client: None,
            tx,
            rx: Some(rx),
            connecting: false,
            failures: 0,
            generation: 0,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting {
            return;
        }
        self.connecting = true;
        let url = self.node.database_url.clone();
        let purpose = self.node.session_purpose("listener");
        let tx = self.tx.clone();
        let channels = [group_channel(self.node.group_id), WORKER_CHANNEL.to_owned()];
        // bounded: a connection accepted but never answered (a half-open partition) would
        // otherwise leave the listener connecting, hence deaf, for good
        let budget = db::connect_budget(&url);
        let fut = async move {
            let connect = async {
                let (client, ended) = db::connect_listening(&url, &purpose, tx).await?;
                db::listen(&client, &channels, "subscribing to notifications").await?;
                Ok::<_, DbError>((client, ended))
            };
            tokio::time::timeout(budget, connect)
                .await
                .map_err(|_| DbError::Timeout("connecting the listener"))?
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.connecting = false;
            match result {
                Ok((client, ended)) => {
                    if act.failures > 0 {
                        info!("listener reconnected; resyncing from the tables");
                        crate::metrics::reconnected("listener");
                    }
                    act.failures = 0;
                    act.generation += 1;
                    act.client = Some(Arc::new(client));
                    let generation = act.generation;
                    ctx.spawn(ended.into_actor(act).map(move |reason, act, ctx| {
                        if act.generation == generation {
                            let reason = reason.unwrap_or_else(|_| "connection dropped".into());
                            act.lost(reason, ctx);
                        }
                    }));
                    act.resync();
                }
                Err(e) => {
                    act.failures += 1;
                    let delay = backoff(act.failures);
                    warn!(error = %e, retry_in = ?delay, "listener cannot connect");
                    ctx.run_later(delay, |act, ctx| act.connect(ctx));
                }
            }
        }));
    }

    fn lost(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.client.take().is_some() {
            warn!(%reason, "listener connection lost");
            self.generation += 1;
            self.failures = self.failures.max(1);
        }
        self.connect(ctx);
    }

    /// After (re)connecting, nothing notified while we were away is known: look at the tables.
    fn resync(&self) {
        if let Some(d) = self.node.dispatcher() {
            d.do_send(DispatcherMsg::Wake);
            d.do_send(DispatcherMsg::Resync);
        }
        if let Some(o) = self.node.outcomes() {
            o.do_send(OutcomesMsg::Retry);
        }
        if let Some(s) = self.node.scheduler() {
            s.do_send(SchedulerMsg::Resync);
        }
        if let Some(m) = self.node.membership() {
            m.do_send(MembershipMsg::Refresh);
        }
        // a node may have joined unannounced meanwhile
        if let Some(c) = self.node.coordinator() {
            c.do_send(CoordinatorMsg::PeerJoined);
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let generation = self.generation;
        let limit = Duration::from_secs(5).min(self.node.config.listener_check_interval);
        let fut = async move { tokio::time::timeout(limit, client.simple_query("SELECT 1")).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("connection check timed out".to_owned()),
            };
            if let Some(reason) = failure {
                if act.generation == generation {
                    act.lost(reason, ctx);
                }
            }
        }));
    }

    fn route(&self, notice: Notice) {
        if notice.channel == WORKER_CHANNEL {
            if notice.payload == self.node.worker_id.to_string() {
                if let Some(m) = self.node.membership() {
                    m.do_send(MembershipMsg::Refresh);
                }
            }
            return;
        }
        match GroupEvent::from_payload(&notice.payload) {
            Some(GroupEvent::Wake) => {
                if let Some(d) = self.node.dispatcher() {
                    d.do_send(DispatcherMsg::Wake);
                }
                if let Some(s) = self.node.scheduler() {
                    s.do_send(SchedulerMsg::RingFilled);
                }
            }
            Some(GroupEvent::Ctl) => {
                if let Some(d) = self.node.dispatcher() {
                    d.do_send(DispatcherMsg::Reconcile);
                }
            }
            Some(GroupEvent::Sched) => {
                if let Some(s) = self.node.scheduler() {
                    s.do_send(SchedulerMsg::Reload);
                }
            }
            Some(GroupEvent::Lease { due_ms }) => {
                if let Some(s) = self.node.scheduler() {
                    s.do_send(SchedulerMsg::LeaseDue(due_ms));
                }
            }
            Some(GroupEvent::Peer) => {
                if let Some(c) = self.node.coordinator() {
                    c.do_send(CoordinatorMsg::PeerJoined);
                }
            }
            None => {
                warn!(channel = %notice.channel, payload = %notice.payload, "unknown notification ignored")
            }
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rx) = self.rx.take() {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|n| (n, rx))
            });
            ctx.add_stream(stream);
        }
        self.connect(ctx);
        let every = self.node.config.listener_check_interval;
        ctx.run_interval(every, |act, ctx| act.check(ctx));
    }
}

impl StreamHandler<Notice> for Listener {
    fn handle(&mut self, notice: Notice, _ctx: &mut Self::Context) {
        self.route(notice);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The channel lives as long as the actor (it holds a sender): nothing to do.
    }
}

impl Handler<ListenerMsg> for Listener {
    type Result = ();

    fn handle(&mut self, msg: ListenerMsg, ctx: &mut Self::Context) {
        match msg {
            ListenerMsg::Lost(reason) => self.lost(reason, ctx),
        }
    }
}
