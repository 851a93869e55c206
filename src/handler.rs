//! In-process task handlers: async functions registered by topic on an embedded [`Node`], run by
//! the node instead of an OS process for every claimed task whose `topic` they handle.
//!
//! Owns the handler registry and the [`Task`] a handler receives (its params and a cancellation
//! token). Must never touch the database: the node claims, times out, cancels and writes the
//! outcome (with its retries) exactly as for a process task.
//!
//! [`Node`]: crate::embedded::Node

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
pub use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One attempt of a task, as its handler sees it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    /// The attempt's fencing token.
    pub run_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    pub topic: String,
    /// `task.params` (`Null` when the task has none).
    pub params: serde_json::Value,
    /// Cancelled when the task is cancelled (`AC`), times out, is taken away from this node or the
    /// node shuts down. A handler that ignores it is dropped after the node's `kill_grace`.
    pub cancel: CancellationToken,
}

impl Task {
    /// The params deserialized into `T`.
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.params)
    }
}

/// What a handler's future ends with after type erasure: the result (`task.result`) or the error
/// text (`task.error`).
pub type HandlerOutput = Result<Option<serde_json::Value>, String>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerOutput> + Send>>;

/// A registered handler.
pub type HandlerFn = Arc<dyn Fn(Task) -> BoxFuture + Send + Sync>;

/// Handlers by topic.
#[derive(Clone, Default)]
pub struct Handlers {
    map: HashMap<String, HandlerFn>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("topics", &self.topics())
            .finish()
    }
}

impl Handlers {
    /// Registers `f` for `topic` (replacing an earlier one). `Ok(value)` ends the attempt `CS`
    /// with `value` as `task.result` (unless it serializes to `null`); `Err(e)` ends it `CF` with
    /// `e.to_string()` as `task.error` (retried while attempts remain); a panic is a failure too.
    pub fn insert<F, Fut, T, E>(&mut self, topic: impl Into<String>, f: F)
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Display,
    {
        let f = Arc::new(f);
        let erased: HandlerFn = Arc::new(move |task: Task| {
            let f = f.clone();
            Box::pin(async move {
                match f(task).await {
                    Ok(value) => match serde_json::to_value(value) {
                        Ok(serde_json::Value::Null) => Ok(None),
                        Ok(value) => Ok(Some(value)),
                        Err(e) => Err(format!("cannot serialize the handler's result: {e}")),
                    },
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        self.map.insert(topic.into(), erased);
    }

    /// The handler of `topic`.
    pub fn get(&self, topic: &str) -> Option<HandlerFn> {
        self.map.get(topic).cloned()
    }

    /// The topics handled (what the node claims besides process tasks).
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.map.keys().cloned().collect();
        topics.sort();
        topics
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}
