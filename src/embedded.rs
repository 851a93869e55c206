//! An embedded node: a Rust program runs tasks in-process with async handlers registered by
//! topic, with the same claiming, retries, timeouts, cancellation and recovery as `pgtaskd node`.
//! The node runs its actors on a thread of its own (an actix `System` on a multi-thread tokio
//! runtime, where handlers run), so it fits into any program, async or not.
//!
//! Owns that thread and the handle that stops it. Must never install signal handlers or start the
//! guardian process (the host program owns both); it does not run process tasks unless asked.
//!
//! ```no_run
//! use pgtaskd::config::NodeConfig;
//! use pgtaskd::embedded::Node;
//!
//! let mut config = NodeConfig::default();
//! config.database_url = Some("postgresql://app@localhost/app".into());
//! let mut node = Node::new(config);
//! node.handler("email.send", |task| async move {
//!     let to: String = task.params["to"].as_str().unwrap_or_default().to_owned();
//!     tokio::select! {
//!         _ = task.cancel.cancelled() => Err("cancelled".to_owned()),
//!         _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => Ok(serde_json::json!({"sent_to": to})),
//!     }
//! });
//! let running = node.start().expect("node starts");
//! // ... the program does its work; tasks of topic email.send run here ...
//! running.stop().expect("node stops");
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::supervisor::{Supervisor, SupervisorMsg};
use crate::config::NodeConfig;
use crate::error::Error;
use crate::handler::{Handlers, Task};
use crate::node::NodeOptions;

/// A node to embed: configure it, register handlers, then [`start`](Node::start) it.
pub struct Node {
    config: NodeConfig,
    handlers: Handlers,
    run_commands: bool,
}

impl Node {
    pub fn new(config: NodeConfig) -> Node {
        Node {
            config,
            handlers: Handlers::default(),
            run_commands: false,
        }
    }

    /// Registers the async handler of `topic`. `Ok(value)` ends the attempt `CS` (value in
    /// `task.result`), `Err(e)` ends it `CF` (retried while attempts remain), and so does a
    /// panic, which never takes the node down. `task.cancel` fires on cancel, timeout or shutdown.
    pub fn handler<F, Fut, T, E>(&mut self, topic: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Display,
    {
        self.handlers.insert(topic, f);
        self
    }

    /// Also claim process tasks (a command) of the group (default: handlers only). Without the
    /// guardian process, a task process can outlive a node killed with SIGKILL.
    pub fn run_commands(&mut self, yes: bool) -> &mut Self {
        self.run_commands = yes;
        self
    }

    /// Connects, migrates (unless `auto_migrate` is off), registers and starts the node on its
    /// own thread; returns once it is registered (or failed to be).
    pub fn start(self) -> Result<RunningNode, Error> {
        let options = NodeOptions {
            handlers: self.handlers,
            topics: Vec::new(),
            run_commands: self.run_commands,
            embedded: true,
            reload: None,
        };
        let config = self.config;
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pgtaskd-node".into())
            .spawn(move || run_embedded(config, options, ready_tx))
            .map_err(|source| Error::Io {
                context: "starting the node thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok((worker_id, supervisor))) => Ok(RunningNode {
                worker_id,
                supervisor,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Io {
                    context: "starting the node".into(),
                    source: std::io::Error::other("the node thread ended during start-up"),
                })
            }
        }
    }
}

type Ready = Result<(i64, Addr<Supervisor>), Error>;

/// The node thread: the shared start-up (`node::run`), reporting readiness or the start-up error.
fn run_embedded(
    config: NodeConfig,
    options: NodeOptions,
    ready: mpsc::Sender<Ready>,
) -> Result<(), Error> {
    let started = std::cell::Cell::new(false);
    let result = crate::node::run(config, options, "pgtaskd-handler", |node| {
        started.set(true);
        let _ = ready.send(Ok((node.worker_id, node.supervisor)));
    });
    match result {
        Err(e) if !started.get() => {
            let _ = ready.send(Err(e));
            Ok(())
        }
        other => other,
    }
}

/// A started embedded node. Dropping it asks the node to stop without waiting.
pub struct RunningNode {
    worker_id: i64,
    supervisor: Addr<Supervisor>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl RunningNode {
    /// This node's id in `long_task.worker`.
    pub fn worker_id(&self) -> i64 {
        self.worker_id
    }

    /// Stops claiming, lets running handlers finish for up to `shutdown_grace` (then cancels
    /// them; their tasks go back to the queue), writes every outcome and waits for the node's
    /// thread. Blocking: from async code call it in `spawn_blocking`.
    pub fn stop(mut self) -> Result<(), Error> {
        self.supervisor
            .do_send(SupervisorMsg::Signal("stop requested by the host program"));
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Io {
                context: "stopping the node".into(),
                source: std::io::Error::other("the node thread panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.supervisor
                .do_send(SupervisorMsg::Signal("node handle dropped"));
        }
    }
}
