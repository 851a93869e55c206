//! The JSON routes the web console reads and acts through (docs/interfaces.md):
//! `GET /tasks/search` (filters, keyset pages), `GET /tasks/{id}/detail` (row, attempts, events,
//! dependencies), `GET /charts?minutes=`, and the changes that are not state changes:
//! `POST /tasks/{id}/priority`, `POST /nodes/{id}/stop`, `POST /nodes/{id}/limit`, and the
//! forced hand-over of a node's tasks, `POST /nodes/{id}/hand-over` (a SQL function). Cancel and
//! re-queue (also "run a draft now") are the API's own `POST /tasks/{id}/cancel|requeue`; the
//! nodes view reads `GET /cluster`.
//!
//! Every query and body is parsed here before the database is touched; a bad one gets a 400 that
//! names the key. The `POST`s need the `write` scope when tokens are configured (the middleware,
//! `auth.rs`). Registered before the API's `/tasks/{id}` so `search` is not taken for an id.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ApiError, HttpState};
use crate::db::admin::{self, Change, HandOver, NodeSetting};
use crate::db::codes::TaskState;
use crate::db::search::{TaskQuery, MAX_PAGE};
use crate::db::{charts, detail, search, DbError, Pool};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tasks/search", web::get().to(search_tasks))
        .route("/tasks/{id}/detail", web::get().to(task_detail))
        .route("/tasks/{id}/priority", web::post().to(set_priority))
        .route("/nodes/{id}/stop", web::post().to(set_stop))
        .route("/nodes/{id}/limit", web::post().to(set_limit))
        .route("/nodes/{id}/hand-over", web::post().to(hand_over))
        .route("/charts", web::get().to(chart_series));
}

fn db_error(e: impl Into<DbError>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.into().to_string())
}

async fn conn(pool: &Pool) -> Result<crate::db::PooledClient<'_>, ApiError> {
    pool.get().await.map_err(db_error)
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T, ApiError> {
    value
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{key}`: `{value}` is not {what}")))
}

fn parse_time(key: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "`{key}`: `{value}` is not an RFC 3339 time such as 2026-12-01T15:00:00Z ({e})"
            ))
        })
}

/// Parses the search's query string; empty values mean "no filter".
fn task_query(params: &HashMap<String, String>) -> Result<TaskQuery, ApiError> {
    let mut q = TaskQuery {
        limit: 50,
        ..TaskQuery::default()
    };
    for (key, value) in params {
        if value.trim().is_empty() {
            continue;
        }
        match key.as_str() {
            "state" => {
                for code in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let s = TaskState::from_code(&code.to_ascii_uppercase()).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`state`: unknown state `{code}` (known: DR AW AE AC CS CF CC)"
                        ))
                    })?;
                    q.states.push(s);
                }
            }
            "group" => q.group_id = Some(parse_num(key, value, "a group id")?),
            "topic" => q.topic = Some(value.clone()),
            "node" => q.worker_id = Some(parse_num(key, value, "a node (worker) id")?),
            "q" => q.text = Some(value.clone()),
            "from" => q.created_from = Some(parse_time(key, value)?),
            "to" => q.created_to = Some(parse_time(key, value)?),
            "before" => q.before = Some(parse_num(key, value, "a task id")?),
            "limit" => {
                q.limit = parse_num::<i64>(key, value, "a number")
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("`limit`: a number from 1 to {MAX_PAGE}"))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}` \
                     (known: state, group, topic, node, q, from, to, before, limit)"
                )))
            }
        }
    }
    if let (Some(from), Some(to)) = (q.created_from, q.created_to) {
        if from >= to {
            return Err(ApiError::bad_request("`from` must be before `to`"));
        }
    }
    Ok(q)
}

/// `GET /tasks/search?state=CF,CC&group=0&topic=&node=&q=&from=&to=&before=&limit=` →
/// `{"tasks": [...], "next": <before of the next page> | null}`.
async fn search_tasks(
    state: web::Data<HttpState>,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = task_query(&params)?;
    let page = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            search::search(&**client, &query).await.map_err(db_error)
        })
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

fn parse_id(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a {what} id")))
}

/// `GET /tasks/{id}/detail`.
async fn task_detail(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "task")?;
    let found = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            detail::task_detail(&**client, id).await.map_err(db_error)
        })
        .await?;
    found
        .map(|d| HttpResponse::Ok().json(d))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no task with id {id}")))
}

/// `GET /charts?minutes=60`.
async fn chart_series(
    state: web::Data<HttpState>,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let mut minutes = 60;
    for (key, value) in params.iter() {
        match key.as_str() {
            "minutes" => {
                minutes = parse_num::<i32>(key, value, "a number")
                    .ok()
                    .filter(|m| (1..=charts::MAX_MINUTES).contains(m))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`minutes`: a number from 1 to {}",
                            charts::MAX_MINUTES
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}` (known: minutes)"
                )))
            }
        }
    }
    let series = state
        .with_db(move |pool| async move {
            let mut client = conn(&pool).await?;
            charts::charts(&mut client, minutes).await.map_err(db_error)
        })
        .await?;
    Ok(HttpResponse::Ok().json(series))
}

/// The value of `key` in a body `{"<key>": <value>}` (None: no such key, or an empty object);
/// any other key is refused.
fn body_value(body: &[u8], key: &'static str) -> Result<Option<serde_json::Value>, ApiError> {
    let mut map: HashMap<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad body (a JSON object): {e}")))?;
    if let Some(other) = map.keys().find(|k| k.as_str() != key) {
        return Err(ApiError::bad_request(format!(
            "unknown key `{other}` (known: {key})"
        )));
    }
    Ok(map.remove(key))
}

/// A body `{"<key>": <integer>}`.
fn body_int(body: &[u8], key: &'static str) -> Result<i64, ApiError> {
    body_value(body, key)?
        .as_ref()
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| ApiError::bad_request(format!("`{key}`: an integer is required")))
}

fn changed<T: serde::Serialize>(
    what: &str,
    id: i64,
    change: Change<T>,
) -> Result<HttpResponse, ApiError> {
    match change {
        Change::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {what} with id {id}"),
        )),
        Change::Done { before, after } => {
            Ok(HttpResponse::Ok().json(json!({ "id": id, "before": before, "after": after })))
        }
    }
}

/// `POST /tasks/{id}/priority` with `{"priority": n}` (lower runs first).
async fn set_priority(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "task")?;
    let priority = i32::try_from(body_int(&body, "priority")?)
        .map_err(|_| ApiError::bad_request("`priority`: out of range for an integer"))?;
    let change = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            admin::set_priority(&**client, id, priority)
                .await
                .map_err(db_error)
        })
        .await?;
    changed("task", id, change)
}

async fn set_node(
    state: web::Data<HttpState>,
    id: i64,
    setting: NodeSetting,
) -> Result<HttpResponse, ApiError> {
    let change = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            admin::set_node(&**client, id, setting)
                .await
                .map_err(db_error)
        })
        .await?;
    changed("node", id, change)
}

/// `POST /nodes/{id}/stop` with `{"stop": 0|1|2|3}`: run, pause, drain then exit, cancel all
/// then exit.
async fn set_stop(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "node")?;
    let stop = body_int(&body, "stop")?;
    let stop = i16::try_from(stop)
        .ok()
        .filter(|s| (0..=3).contains(s))
        .ok_or_else(|| {
            ApiError::bad_request(
                "`stop`: 0 (run), 1 (pause), 2 (drain then exit) or 3 (cancel all then exit)",
            )
        })?;
    set_node(state, id, NodeSetting::Stop(stop)).await
}

/// `POST /nodes/{id}/limit` with `{"max_task_count": n}` (n ≥ 0).
async fn set_limit(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "node")?;
    let limit = body_int(&body, "max_task_count")?;
    let limit = i32::try_from(limit)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::bad_request("`max_task_count`: a number of tasks, 0 or more"))?;
    set_node(state, id, NodeSetting::Limit(limit)).await
}

/// The body of `POST /nodes/{id}/hand-over`: `{"kill": true|false}`, or none (kill).
fn hand_over_kill(body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(true);
    }
    match body_value(body, "kill")? {
        None => Ok(true),
        Some(v) => v.as_bool().ok_or_else(|| {
            ApiError::bad_request(
                "`kill`: true (kill the runs and queue them again) or false (let them finish)",
            )
        }),
    }
}

/// `POST /nodes/{id}/hand-over` with `{"kill": true}` (the default) or `{"kill": false}`: the
/// node claims nothing from now on; with kill its running tasks are killed and queued again for
/// the other nodes, without they finish where they run (`long_task.hand_over_node`). `200
/// {"id", "kill", "runs": [{"task_id", "run_id", "action"}], "requeued", "finishing", "pinned",
/// "cancelling"}`; `404` unknown node; `403` when the database refuses the node's role.
async fn hand_over(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "node")?;
    let kill = hand_over_kill(&body)?;
    let done = state
        .with_db(move |pool| async move {
            let client = conn(&pool).await?;
            admin::hand_over_node(&**client, id, kill)
                .await
                .map_err(|e| match &e {
                    DbError::Query { source, .. }
                        if source.code()
                            == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                    {
                        ApiError::new(StatusCode::FORBIDDEN, e.to_string())
                    }
                    _ => db_error(e),
                })
        })
        .await?;
    let runs = match done {
        HandOver::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no node with id {id}"),
            ))
        }
        HandOver::Done(runs) => runs,
    };
    let mut answer = json!({ "id": id, "kill": kill });
    for (action, n) in admin::count_actions(&runs) {
        answer[action] = json!(n);
    }
    answer["runs"] = json!(runs);
    tracing::info!(worker_id = id, kill, runs = runs.len(), "node handed over");
    Ok(HttpResponse::Ok().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn search_queries_are_parsed_or_refused_by_key() {
        let q = task_query(&params(&[
            ("state", "cf, CC"),
            ("group", "2"),
            ("node", ""),
            ("q", "backup"),
            ("before", "100"),
        ]))
        .expect("parsed");
        assert_eq!(q.states, vec![TaskState::Failed, TaskState::Cancelled]);
        assert_eq!(q.group_id, Some(2));
        assert_eq!(q.worker_id, None, "an empty value is no filter");
        assert_eq!(q.before, Some(100));
        for (pairs, key) in [
            (&[("state", "XX")][..], "`state`"),
            (&[("group", "a")][..], "`group`"),
            (&[("from", "yesterday")][..], "`from`"),
            (&[("limit", "0")][..], "`limit`"),
            (&[("colour", "red")][..], "colour"),
            (
                &[
                    ("from", "2026-01-02T00:00:00Z"),
                    ("to", "2026-01-01T00:00:00Z"),
                ][..],
                "`from`",
            ),
        ] {
            let err = task_query(&params(pairs)).unwrap_err();
            assert!(err.message.contains(key), "{pairs:?}: {}", err.message);
        }
    }

    #[test]
    fn a_hand_over_body_says_whether_to_kill() {
        assert!(hand_over_kill(b"").expect("no body: kill"));
        assert!(hand_over_kill(b"{}").expect("no key: kill"));
        assert!(!hand_over_kill(br#"{"kill": false}"#).expect("false"));
        for (body, want) in [
            (&br#"{"kill": "no"}"#[..], "`kill`"),
            (&br#"{"wait": true}"#[..], "unknown key `wait`"),
            (&b"[1]"[..], "bad body"),
        ] {
            let err = hand_over_kill(body).unwrap_err();
            assert!(err.message.contains(want), "{}", err.message);
        }
    }

    #[test]
    fn bodies_name_their_key() {
        assert_eq!(body_int(br#"{"stop": 1}"#, "stop").expect("ok"), 1);
        for (body, want) in [
            (&br#"{"stop": "1"}"#[..], "an integer"),
            (&br#"{"stop": 1, "x": 2}"#[..], "unknown key `x`"),
            (&b"not json"[..], "bad body"),
            (&b"{}"[..], "`stop`"),
        ] {
            let err = body_int(body, "stop").unwrap_err();
            assert!(err.message.contains(want), "{}", err.message);
        }
    }
}
