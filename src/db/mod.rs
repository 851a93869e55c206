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
pub mod outcomes;
pub mod overview;
pub mod pool;
pub mod queries;
pub mod search;
pub mod tasks;
pub mod tls;

use std::time::Duration;

use tokio_postgres::{AsyncMessage, Client};

pub use tls::Connector;

/// The shared connection pool (its connections keep the node's statements prepared: `pool`).
pub type Pool = bb8::Pool<pool::Manager>;

/// A connection of the pool.
pub type PooledClient<'a> = bb8::PooledConnection<'a, pool::Manager>;

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
        cfg.connect_timeout(default_connect_timeout(host_count(&cfg)));
    }
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(2))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(2);
    Ok((cfg, connector))
}

/// What every connect may take in all, whatever the number of hosts, unless the connection
/// string sets `connect_timeout` (which, as in libpq, applies to each host in turn).
const CONNECT_BUDGET: Duration = Duration::from_secs(5);

/// The hosts of a (possibly multi-host) connection string: each is tried in turn.
fn host_count(cfg: &tokio_postgres::Config) -> u32 {
    let hosts = cfg.get_hosts().len().max(cfg.get_hostaddrs().len()).max(1);
    u32::try_from(hosts).unwrap_or(u32::MAX)
}

/// The default `connect_timeout` of each host: the budget shared by the hosts (at least 1 s),
/// so a first host that does not answer (a dead primary's machine) leaves time for the next.
fn default_connect_timeout(hosts: u32) -> Duration {
    (CONNECT_BUDGET / hosts.max(1)).max(Duration::from_secs(1))
}

/// How long a connect to `url` may take before it counts as hung: `connect_timeout` for each of
/// its hosts in turn, plus a second for the start-up exchange (and `target_session_attrs`'
/// check). For the callers that bound a connect themselves (the coordinator, its watchers).
pub fn connect_budget(url: &str) -> Duration {
    match connection_config(url, "budget") {
        Ok((cfg, _)) => {
            let per_host = cfg.get_connect_timeout().copied().unwrap_or(CONNECT_BUDGET);
            per_host * host_count(&cfg) + Duration::from_secs(1)
        }
        // the connect itself reports what is wrong with the string
        Err(_) => CONNECT_BUDGET,
    }
}

/// Creates the shared pool. Connections are made lazily; a broken one is dropped when returned.
pub fn create_pool(url: &str, purpose: &str, size: u32) -> Result<Pool, DbError> {
    let (cfg, connector) = connection_config(url, purpose)?;
    let manager = pool::Manager::new(cfg, connector);
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
    use super::{connect_budget, connection_config, with_dbname};
    use std::time::Duration;

    #[test]
    fn multi_host_strings_pass_through_and_share_the_connect_budget() {
        let url = "postgresql://u@db1:5432,db2:5433/app?target_session_attrs=read-write";
        let (cfg, _) = connection_config(url, "w1 test").expect("a multi-host URL");
        assert_eq!(cfg.get_hosts().len(), 2);
        assert_eq!(cfg.get_ports(), [5432, 5433]);
        assert_eq!(
            cfg.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            cfg.get_connect_timeout(),
            Some(&Duration::from_millis(2500))
        );
        assert_eq!(connect_budget(url), Duration::from_secs(6));
        // key=value form, and an explicit timeout applies to each host
        let kv = "host=db1,db2,db3 port=5432 dbname=app connect_timeout=2 target_session_attrs=read-write";
        let (cfg, _) = connection_config(kv, "w1 test").expect("a multi-host string");
        assert_eq!(cfg.get_hosts().len(), 3);
        assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(connect_budget(kv), Duration::from_secs(7));
        // one host keeps the whole budget
        assert_eq!(
            connect_budget("postgresql://u@db/app"),
            Duration::from_secs(6)
        );
    }

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
