//! The JSON routes: tasks (submit, read, list, cancel, re-queue), the cluster overview, health and
//! readiness, and the Prometheus metrics. Bodies and queries are parsed here, by hand, so every
//! malformed input gets a 4xx with a JSON error naming what was wrong, before any write.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ApiError, HttpState};
use crate::db::codes::TaskState;
use crate::db::overview::{cluster_overview, ClusterOverview};
use crate::db::tasks::{self, NewTask, TaskError, TaskFilter, Transition};
use crate::db::{migrate, DbError, Pool};
use crate::metrics;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tasks", web::post().to(submit))
        .route("/tasks", web::get().to(list))
        .route("/tasks/{id}", web::get().to(get))
        .route("/tasks/{id}/cancel", web::post().to(cancel))
        .route("/tasks/{id}/requeue", web::post().to(requeue))
        .route("/cluster", web::get().to(cluster))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text));
}

fn db_error(e: impl Into<DbError>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.into().to_string())
}

async fn conn(pool: &Pool) -> Result<crate::db::PooledClient<'_>, ApiError> {
    pool.get().await.map_err(db_error)
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a task id")))
}

/// `POST /tasks`: a JSON object whose keys are task columns → `201 {"id": …}`.
async fn submit(state: web::Data<HttpState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let task: NewTask = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("bad task: {e}")))?;
    if task.command.is_none() && task.topic.is_none() {
        return Err(ApiError::bad_request(
            "bad task: missing field `command` (or `topic`, for a handler or consumer task)",
        ));
    }
    task.validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let id = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            tasks::submit(&**client, &task).await.map_err(|e| match e {
                TaskError::Field(e) => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                }
                TaskError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
                TaskError::Db(e) => db_error(e),
            })
        })
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/tasks/{id}")))
        .json(json!({ "id": id })))
}

/// `GET /tasks/{id}`: the row, or 404.
async fn get(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let row = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            tasks::get(&**client, id).await.map_err(db_error)
        })
        .await?;
    match row {
        Some(row) => Ok(HttpResponse::Ok().json(row)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task with id {id}"),
        )),
    }
}

/// `GET /tasks?state=AW,AE&group=0&limit=100`: tasks, newest first, without output tails.
async fn list(
    state: web::Data<HttpState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let mut filter = TaskFilter {
        limit: 100,
        ..TaskFilter::default()
    };
    for (key, value) in query.iter() {
        match key.as_str() {
            "state" => {
                for code in value.split(',').filter(|c| !c.is_empty()) {
                    let s = TaskState::from_code(&code.to_ascii_uppercase()).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown state `{code}` (known: DR AW AE AC CS CF CC)"
                        ))
                    })?;
                    filter.states.push(s);
                }
            }
            "group" | "group_id" => {
                filter.group_id = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(format!("`{key}`: `{value}` is not a group id"))
                })?)
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| ApiError::bad_request("`limit`: a number from 1 to 10000"))?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}` (known: state, group, limit)"
                )))
            }
        }
    }
    let rows = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            tasks::list(&**client, &filter).await.map_err(db_error)
        })
        .await?;
    Ok(HttpResponse::Ok().json(rows))
}

fn transition_response(id: i64, verb: &str, result: Transition) -> Result<HttpResponse, ApiError> {
    match result {
        Transition::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task with id {id}"),
        )),
        Transition::Refused(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("cannot {verb} task {id}: it is in state {s}"),
        )),
        Transition::Done { before, after } => {
            Ok(HttpResponse::Ok().json(json!({ "id": id, "before": before, "after": after })))
        }
    }
}

/// `POST /tasks/{id}/cancel`.
async fn cancel(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let result = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            tasks::cancel(&**client, id).await.map_err(db_error)
        })
        .await?;
    transition_response(id, "cancel", result)
}

/// `POST /tasks/{id}/requeue`.
async fn requeue(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let result = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            tasks::requeue(&**client, id).await.map_err(db_error)
        })
        .await?;
    transition_response(id, "requeue", result)
}

/// The overview shared by `/cluster`, `/metrics` and the status page.
pub async fn overview(state: &HttpState, recent: i64) -> Result<ClusterOverview, ApiError> {
    state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            cluster_overview(&client, 100, recent)
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        })
        .await
}

/// `GET /cluster`.
async fn cluster(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(overview(&state, 20).await?))
}

/// `GET /healthz`: the process serves requests.
async fn healthz(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "worker_id": state.node.worker_id }))
}

/// `GET /readyz`: connected, migrated, heartbeat fresh → 200, else 503 naming what failed.
async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let schema = state
        .with_db(|pool| async move {
            let client = conn(&pool).await?;
            Ok(migrate::check(&client).await.map_err(|e| e.to_string()))
        })
        .await;
    let (connected, migrated) = match schema {
        Ok(Ok(())) => (Ok(()), Ok(())),
        Ok(Err(e)) => (Ok(()), Err(e)),
        Err(e) => (Err(e.message), Err("unknown: not connected".to_owned())),
    };
    let limit = state.node.config.heartbeat_timeout.as_secs_f64();
    let heartbeat = match metrics::heartbeat_age() {
        Some(age) if age <= limit => Ok(()),
        Some(age) => Err(format!("last heartbeat {age:.1}s ago (limit {limit}s)")),
        None => Err("no heartbeat yet".to_owned()),
    };
    let check = |r: &Result<(), String>| match r {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let ready = connected.is_ok() && migrated.is_ok() && heartbeat.is_ok();
    let body = json!({
        "ready": ready,
        "worker_id": state.node.worker_id,
        "checks": {
            "connected": check(&connected),
            "migrated": check(&migrated),
            "heartbeat": check(&heartbeat),
        }
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: the Prometheus text format. Cluster gauges come from the database; when it
/// cannot be read, the node's own metrics are still served.
async fn metrics_text(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    metrics::set_running(state.node.running().len());
    match overview(&state, 0).await {
        Ok(o) => {
            let gauges: Vec<metrics::GroupGauges> = o
                .groups
                .iter()
                .map(|g| metrics::GroupGauges {
                    group_id: g.group_id,
                    waiting: g.waiting,
                    oldest_waiting_secs: g.oldest_waiting,
                    paused: g.paused,
                    coordinator_term: o
                        .coordinators
                        .iter()
                        .find(|c| c.group_id == g.group_id)
                        .map(|c| c.term),
                })
                .collect();
            metrics::set_cluster_gauges(&gauges);
            metrics::set_database_gauges(o.horizon.as_ref(), &o.tables);
            metrics::set_limit_gauges(&o.limits);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cluster gauges unavailable"),
    }
    let text = metrics::render().map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
