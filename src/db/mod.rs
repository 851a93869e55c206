//! The database layer: connection settings, the shared pool, dedicated connections, migrations and
//! every SQL statement a node sends (in `queries`).
//!
//! Owns how connections are made (keepalives, timeouts, application name) so that a dead peer is
//! noticed within seconds. Must never hold a pooled connection across an await on anything but
//! the database, and never LISTEN or take a session lock on a pooled connection (bb8 drops
//! notifications and recycles sessions).

pub mod admin;
pub mod charts;
pub mod cluster;
pub mod codes;
pub mod crons;
pub mod detail;
pub mod follow;
pub mod migrate;
pub mod overview;
pub mod queries;
pub mod search;
pub mod tasks;
pub mod tls;

use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{AsyncMessage, Client};

pub use tls::Connector;

/// The shared connection pool.
pub type Pool = bb8::Pool<PostgresConnectionManager<Connector>>;

/// A connection of the pool.
pub type PooledClient<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<Connector>>;

/// Errors of talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("database TLS settings: {0}")]
    Tls(#[source] tls::TlsError),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("no database connection available: {0}")]
    Pool(String),
    #[error("{context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}: the database did not answer in time")]
    Timeout(&'static str),
    #[error("unexpected answer from the database: {0}")]
    Unexpected(&'static str),
}

impl DbError {
    /// Wraps a query error with what was being done.
    pub fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |source| DbError::Query { context, source }
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for DbError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(source) => DbError::Connect(source),
            bb8::RunError::TimedOut => DbError::Pool("timed out waiting for a connection".into()),
        }
    }
}

/// Connection settings for every connection a node opens: the server drops a silent peer after
/// ~3 s (`tcp_keepalives_*`, `tcp_user_timeout`), and the client notices a dead server by TCP
/// keepalives too.
///
/// A node names its sessions `pgtaskd w<worker id> <purpose>` (pass `w<id> <purpose>`), so a
/// coordinator can end every session of a hung node. TLS and the password follow libpq's
/// settings (`tls`).
pub fn connection_config(
    url: &str,
    purpose: &str,
) -> Result<(tokio_postgres::Config, Connector), DbError> {
    connection_config_with(url, purpose, "")
}

/// `connection_config` plus extra session settings (`-c name=value ...`).
pub fn connection_config_with(
    url: &str,
    purpose: &str,
    extra: &str,
) -> Result<(tokio_postgres::Config, Connector), DbError> {
    let (mut cfg, connector) = tls::prepare(url)?;
    let session = format!("-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c tcp_user_timeout=3000 {extra}");
    let session = session.trim_end();
    let options = match cfg.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {session}"),
        _ => session.to_owned(),
    };
    cfg.options(&options);
    if cfg.get_application_name().is_none() {
        cfg.application_name(format!("pgtaskd {purpose}"));
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(2))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(2);
    Ok((cfg, connector))
}

/// Creates the shared pool. Connections are made lazily; a broken one is dropped when returned.
pub fn create_pool(url: &str, purpose: &str, size: u32) -> Result<Pool, DbError> {
    let (cfg, connector) = connection_config(url, purpose)?;
    let manager = PostgresConnectionManager::new(cfg, connector);
    Ok(bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(5))
        .build_unchecked(manager))
}

/// Opens a dedicated connection whose driver runs on the current runtime; notifications and
/// notices are dropped. For session-scoped work (advisory locks, migrations).
pub async fn connect_dedicated(url: &str, purpose: &str) -> Result<Client, DbError> {
    connect_dedicated_with(url, purpose, "").await
}

/// `connect_dedicated` with extra session settings (`-c name=value ...`).
pub async fn connect_dedicated_with(
    url: &str,
    purpose: &str,
    extra: &str,
) -> Result<Client, DbError> {
    let (cfg, connector) = connection_config_with(url, purpose, extra)?;
    let (client, connection) = cfg.connect(connector).await.map_err(DbError::Connect)?;
    let purpose = purpose.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%purpose, error = %e, "dedicated connection ended");
        }
    });
    Ok(client)
}

/// A notification received on a listening connection.
#[derive(Debug, Clone)]
pub struct Notice {
    pub channel: String,
    pub payload: String,
}

/// Opens a connection that delivers notifications into `tx`. The returned client is used to
/// LISTEN and to check the connection; when the connection ends, `tx` gets nothing more and the
/// returned receiver of the end signal resolves.
pub async fn connect_listening(
    url: &str,
    purpose: &str,
    tx: tokio::sync::mpsc::UnboundedSender<Notice>,
) -> Result<(Client, tokio::sync::oneshot::Receiver<String>), DbError> {
    let (cfg, connector) = connection_config(url, purpose)?;
    let (client, mut connection) = cfg.connect(connector).await.map_err(DbError::Connect)?;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let reason = loop {
            match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let notice = Notice {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    if tx.send(notice).is_err() {
                        break "listener gone".to_owned();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.to_string(),
                None => break "connection closed".to_owned(),
            }
        };
        let _ = ended_tx.send(reason);
    });
    Ok((client, ended_rx))
}

/// `LISTEN`s on `channels` (one round trip) on a connection from `connect_listening`.
pub async fn listen(
    client: &Client,
    channels: &[impl AsRef<str>],
    context: &'static str,
) -> Result<(), DbError> {
    let sql: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{}\";", c.as_ref()))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .map_err(DbError::query(context))
}

/// Replaces the database name in a `postgres://` URL or a `key=value` connection string (for
/// tools that create a database next to an admin URL: tests, benches).
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={dbname}");
    };
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = scheme_end + 3;
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{dbname}{query}")
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn with_dbname_replaces_or_adds_the_database() {
        assert_eq!(
            with_dbname("postgresql://u@h:5/admin?sslmode=disable", "t1"),
            "postgresql://u@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://u@h", "t2"), "postgres://u@h/t2");
        assert_eq!(
            with_dbname("host=/tmp port=5", "t3"),
            "host=/tmp port=5 dbname=t3"
        );
    }
}
