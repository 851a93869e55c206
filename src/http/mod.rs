//! The node's HTTP server (actix-web, off unless `http` is configured): the task API (and a
//! task's live output as server-sent events, `stream.rs`), the cluster overview, health and
//! readiness probes, Prometheus metrics, the web console (`/`) with its JSON routes, and the
//! plain status page (`/status`).
//!
//! Runs inside the node's actix `System` (started by `node::run`) with one worker thread and no
//! signal handling of its own (the Supervisor owns shutdown). Database work of a request runs on
//! the node's main runtime, where the pool lives (connections made from an actix-web worker's
//! runtime would die with it). Must never hold a request open on anything unbounded, and never
//! write anything when a request is malformed (an output stream is bounded in number and time).

mod api;
pub mod auth;
mod console;
mod console_api;
mod page;
mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use serde_json::json;

use crate::node::NodeContext;

/// What every request handler shares.
pub struct HttpState {
    pub node: Arc<NodeContext>,
    /// The node's main runtime: database work runs there.
    pub runtime: tokio::runtime::Handle,
    /// The bearer tokens requests are checked against (none: every route is open).
    pub tokens: auth::Tokens,
    /// The permits of open output streams (`stream::MAX_STREAMS`).
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// A request's error: a status and a JSON body `{"error": message}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %error, "HTTP request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

/// Bound on the database work of one request.
const DB_DEADLINE: Duration = Duration::from_secs(10);

impl HttpState {
    /// Runs `work` with a pooled connection on the node's main runtime, within `DB_DEADLINE`.
    pub async fn with_db<T, F, Fut>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(crate::db::Pool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let pool = self.node.pool.clone();
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(DB_DEADLINE, work(pool)).await });
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer in time",
            )),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {source}")]
pub struct HttpError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves until the actix System stops. Must be called inside the System.
pub fn start(node: Arc<NodeContext>, addr: SocketAddr) -> Result<(), HttpError> {
    let tokens = node.config.http_tokens().map_err(|e| HttpError {
        addr,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.0),
    })?;
    let authenticated = !tokens.is_empty();
    let node_tls = (
        node.config.http_tls_cert.clone(),
        node.config.http_tls_key.clone(),
    );
    let state = web::Data::new(HttpState {
        node,
        runtime: tokio::runtime::Handle::current(),
        tokens,
        streams: stream::stream_permits(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::bad_request(format!("bad path: {e}")).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::bad_request(format!("bad query: {e}")).into()),
            )
            .wrap(actix_web::middleware::from_fn(auth::require_token))
            // before the API's routes: `/tasks/search` is not a task id
            .configure(console_api::routes)
            .configure(api::routes)
            .route("/tasks/{id}/output", web::get().to(stream::output))
            .route("/tasks/{id}/output/full", web::get().to(stream::full))
            .route("/status", web::get().to(page::status_page))
            .route("/", web::get().to(console::console_page))
            .default_service(web::to(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "no such route").error_response()
            }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1);
    let tls = match (&node_tls.0, &node_tls.1) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key).map_err(|e| HttpError {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?),
        _ => None,
    };
    let https = tls.is_some();
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(addr, config),
        None => server.bind(addr),
    }
    .map_err(|source| HttpError { addr, source })?
    .run();
    tracing::info!(%addr, authenticated, https, "serving HTTP");
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
