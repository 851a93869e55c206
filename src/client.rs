//! The Rust client API: publish tasks (alone or inside the caller's transaction), cancel them,
//! read them and wait for their end. Works against any pgtaskd database; nodes (the binary or an
//! embedded [`Node`](crate::embedded::Node)) run what it publishes.
//!
//! Owns a small connection pool. Must never write a task's outcome (that is the running node's
//! or consumer's job, guarded by its run id).
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgtaskd::client::ClientError> {
//! use pgtaskd::client::{Client, NewTask};
//!
//! let client = Client::connect("postgresql://app@localhost/app").await?;
//! let id = client
//!     .submit(&NewTask::topic("email.send").params(serde_json::json!({"to": "a@example.com"})))
//!     .await?;
//! let done = client.wait(id, std::time::Duration::from_secs(30)).await?;
//! println!("task {id} ended {:?} with {:?}", done.state, done.result);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;

pub use crate::db::codes::TaskState;
use crate::db::tasks::{self, TaskError};
pub use crate::db::tasks::{NewTask, TaskInfo};
use crate::db::{self, DbError, Pool};

/// Errors of the client API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The task was refused before anything was written (a field, or the database's checks).
    #[error("task refused: {0}")]
    Refused(String),
    #[error("task {0} does not exist")]
    NotFound(i64),
    #[error("task {id} did not end within {waited:?} (state {state:?})")]
    Timeout {
        id: i64,
        waited: Duration,
        state: TaskState,
    },
}

/// A handle on a pgtaskd database for programs that publish and follow tasks.
#[derive(Clone)]
pub struct Client {
    pool: Pool,
}

impl Client {
    /// Connects (lazily: the first call opens a connection) with a pool of 4 connections.
    pub async fn connect(database_url: &str) -> Result<Client, ClientError> {
        let pool = db::create_pool(database_url, "client", 4)?;
        // fail early on a bad URL or an unreachable server
        drop(pool.get().await.map_err(DbError::from)?);
        Ok(Client { pool })
    }

    /// Uses an existing pool.
    pub fn from_pool(pool: Pool) -> Client {
        Client { pool }
    }

    /// Publishes a task; returns its id (the existing task's id when its dedup key is taken).
    pub async fn submit(&self, task: &NewTask) -> Result<i64, ClientError> {
        let conn = self.pool.get().await.map_err(DbError::from)?;
        self.submit_in(&**conn, task).await
    }

    /// Publishes a task inside the caller's transaction (or on any connection): it exists, and
    /// nodes are notified, only if that transaction commits.
    ///
    /// ```no_run
    /// # async fn demo(pg: &mut tokio_postgres::Client, client: &pgtaskd::client::Client)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// use pgtaskd::client::NewTask;
    /// let tx = pg.transaction().await?;
    /// tx.execute("INSERT INTO orders (id) VALUES (42)", &[]).await?;
    /// client.submit_in(&tx, &NewTask::topic("order.confirm").params(serde_json::json!({"order": 42}))).await?;
    /// tx.commit().await?; // a rollback would leave no task
    /// # Ok(()) }
    /// ```
    pub async fn submit_in<C: GenericClient + Sync>(
        &self,
        tx: &C,
        task: &NewTask,
    ) -> Result<i64, ClientError> {
        tasks::submit(tx, task).await.map_err(|e| match e {
            TaskError::Field(e) => ClientError::Refused(e.to_string()),
            TaskError::Refused(m) => ClientError::Refused(m),
            TaskError::Db(e) => ClientError::Db(e),
        })
    }

    /// Cancels a task: a waiting one ends `CC` at once, a running one is killed by its node
    /// (its handler's token is cancelled). False when it is missing or already final.
    pub async fn cancel(&self, id: i64) -> Result<bool, ClientError> {
        let conn = self.pool.get().await.map_err(DbError::from)?;
        Ok(tasks::cancel(&**conn, id).await?.is_done())
    }

    /// Reads a task.
    pub async fn get(&self, id: i64) -> Result<Option<TaskInfo>, ClientError> {
        let conn = self.pool.get().await.map_err(DbError::from)?;
        Ok(tasks::info(&**conn, id).await?)
    }

    /// Waits until the task is final (CS, CF or CC), at most `limit`. Reads the row with a
    /// back-off from 10 ms to 500 ms (a client-side wait; nodes never poll).
    pub async fn wait(&self, id: i64, limit: Duration) -> Result<TaskInfo, ClientError> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(10);
        loop {
            let info = self.get(id).await?.ok_or(ClientError::NotFound(id))?;
            if info.is_final() {
                return Ok(info);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    id,
                    waited: limit,
                    state: info.state,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}
