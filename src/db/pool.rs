//! The shared connection pool: bb8 over tokio-postgres, where each connection keeps the node's
//! own statements prepared — parsed and planned once per session instead of at every call.
//!
//! A statement sent with `query_typed` goes through the unnamed statement: the server parses and
//! plans it on every call. For the claim (a function scan, a CTE and a correlated subquery) that
//! planning cost about as much as a one-task claim's own work. `Connection::query_prepared`
//! prepares a statement the first time a connection sends it (one extra round trip per session)
//! and reuses it after. Owns the pool's connection type; must never cache a statement that is
//! not a `&'static str` of the node's own code (a cache per connection, bounded by the number of
//! such statements).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::Connector;

/// A pooled connection: the client and the statements it has prepared.
pub struct Connection {
    client: Client,
    prepared: Mutex<HashMap<&'static str, Statement>>,
}

impl Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Connection {
    /// Runs `sql` (with these parameter types) as a statement this connection prepared once.
    /// A statement the server can no longer run as prepared (a schema upgrade changed what a
    /// function returns: "cached plan must not change result type") is prepared again, once.
    pub async fn query_prepared(
        &self,
        sql: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql, params).await?;
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(value, _)| *value).collect();
        match self.client.query(&statement, &values).await {
            Err(e) if plan_outdated(&e) => {
                self.forget(sql);
                let statement = self.statement(sql, params).await?;
                self.client.query(&statement, &values).await
            }
            result => result,
        }
    }

    async fn statement(
        &self,
        sql: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache().get(sql) {
            return Ok(statement.clone());
        }
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let statement = self.client.prepare_typed(sql, &types).await?;
        self.cache().insert(sql, statement.clone());
        Ok(statement)
    }

    fn forget(&self, sql: &'static str) {
        self.cache().remove(sql);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        // the map is only ever inserted into or removed from: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still good to use
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The server refused a prepared statement whose result type a schema change altered.
fn plan_outdated(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::FEATURE_NOT_SUPPORTED && db.message().starts_with("cached plan")
    })
}

/// Makes the pool's connections: bb8-postgres' manager, each client wrapped with its cache.
pub struct Manager {
    inner: PostgresConnectionManager<Connector>,
}

impl Manager {
    pub fn new(config: tokio_postgres::Config, connector: Connector) -> Manager {
        Manager {
            inner: PostgresConnectionManager::new(config, connector),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        let client = self.inner.connect().await?;
        Ok(Connection {
            client,
            prepared: Mutex::new(HashMap::new()),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), tokio_postgres::Error> {
        self.inner.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}
