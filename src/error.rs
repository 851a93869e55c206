//! The library's top-level error: what can stop a node from starting or running. Each module has
//! its own `thiserror` enum; this one gathers them at the library's boundary.

use crate::config::ConfigError;
use crate::db::migrate::MigrateError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("worker id {0} is in use by a live node (its liveness lock is held); pick another --worker-id")]
    WorkerIdInUse(i64),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("outcome spool: {0}")]
    Spool(String),
    #[error("cannot start the process guardian: {0}")]
    Guardian(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
