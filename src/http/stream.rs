//! `GET /tasks/{id}/output`: a task's output as server-sent events, until the task is final; and
//! `GET /tasks/{id}/output/full`: the output this node captured of an attempt (`capture`).
//!
//! Each stream has its own follower (`db::follow::Follower`: one dedicated connection that
//! listens on the done and output channels and reads the row again when they name the task, and
//! at least every 5 s), pumped on the node's main runtime into the response. Bounded: at most
//! `MAX_STREAMS` at once (503 beyond), each at most `MAX_STREAM_TIME` (then an `timeout` event:
//! reconnect), ended as soon as the client goes away.
//!
//! Events (`event:` name, `data:` lines; a chunk of output is the text to append, its lines one
//! `data:` line each, so a chunk that does not end a line continues in the next one):
//! `stdout`, `stderr`, `attempt` (a new attempt began; data: its number), `gap` (output went by
//! that the tails no longer hold), `end` (data: JSON `{id, state_id, exit_code, exit_signal,
//! error}`), `timeout`, `error` (data: the message); and a comment line every 5 s of quiet.
//! Must never write anything.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::{ApiError, HttpState};
use crate::db::codes::{DONE_CHANNEL, OUTPUT_CHANNEL};
use crate::db::follow::{self, Advance, Follower, OutputCursor, OutputView, Woke, REREAD};
use crate::process::capture::{self, Stream};

/// Output streams open at once, per node (each holds a database connection).
pub const MAX_STREAMS: usize = 16;

/// Bound on opening a stream (connect, LISTEN, the first read).
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// The longest one stream stays open.
pub const MAX_STREAM_TIME: Duration = Duration::from_secs(3600);

/// The permits of open streams.
pub fn stream_permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_STREAMS))
}

/// One server-sent event.
fn event(name: &str, data: &str) -> web::Bytes {
    let mut text = format!("event: {name}\n");
    for line in data.split(['\n', '\r']) {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    web::Bytes::from(text)
}

fn advance_events(advance: &Advance) -> Vec<web::Bytes> {
    let mut events = Vec::new();
    if let Some(attempt) = advance.new_attempt {
        events.push(event("attempt", &attempt.to_string()));
    }
    if advance.gap {
        events.push(event("gap", ""));
    }
    if !advance.stdout.is_empty() {
        events.push(event("stdout", &advance.stdout));
    }
    if !advance.stderr.is_empty() {
        events.push(event("stderr", &advance.stderr));
    }
    events
}

fn end_event(view: &OutputView) -> web::Bytes {
    let s = &view.status;
    let data = serde_json::json!({
        "id": s.id,
        "state_id": s.state.code(),
        "exit_code": s.exit_code,
        "exit_signal": s.exit_signal,
        "error": s.error,
    });
    event("end", &data.to_string())
}

/// `GET /tasks/{id}/output`: 404 for an unknown task, 503 when `MAX_STREAMS` are open.
pub async fn output(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{path}` is not a task id")))?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} output streams are open on this node already"),
        )
    })?;
    let url = state.node.database_url.clone();
    // listen, then the first read, before the answer: an unknown task is a 404, not an empty
    // stream; bounded like any request's database work
    let opened = state
        .runtime
        .spawn(async move {
            tokio::time::timeout(OPEN_DEADLINE, async {
                let follower =
                    Follower::connect(&url, "http output", &[OUTPUT_CHANNEL, DONE_CHANNEL]).await?;
                let first = follow::output(follower.client(), id).await?;
                Ok::<_, crate::db::DbError>((follower, first))
            })
            .await
        })
        .await
        .map_err(ApiError::internal)?;
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
    let (follower, first) = opened
        .map_err(|_| unavailable("the database did not answer in time".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let first = first
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no task with id {id}")))?;
    let (tx, rx) = mpsc::channel::<web::Bytes>(16);
    state.runtime.spawn(async move {
        let _permit = permit;
        pump(follower, id, first, tx).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// Sends the events of task `id` until it is final, the client is gone, or the time is up.
async fn pump(mut follower: Follower, id: i64, first: OutputView, tx: mpsc::Sender<web::Bytes>) {
    let deadline = Instant::now() + MAX_STREAM_TIME;
    let mut cursor = OutputCursor::default();
    let mut advances = vec![cursor.advance(&first)];
    let mut view = first;
    loop {
        for bytes in advances.iter().flat_map(advance_events) {
            if tx.send(bytes).await.is_err() {
                return; // the client went away
            }
        }
        if view.status.state.is_final() {
            let _ = tx.send(end_event(&view)).await;
            return;
        }
        if Instant::now() >= deadline {
            let _ = tx.send(event("timeout", "")).await;
            return;
        }
        let wake = deadline.min(Instant::now() + REREAD);
        tokio::select! {
            woke = follower.next(|x| x == id, Some(wake)) => match woke {
                Err(e) => {
                    let _ = tx.send(event("error", &e.to_string())).await;
                    return;
                }
                // a comment line: keeps proxies from closing a quiet stream
                Ok(Woke::Deadline) => {
                    if tx.send(web::Bytes::from_static(b": still running\n\n")).await.is_err() {
                        return;
                    }
                }
                Ok(Woke::Notified) => {}
            },
            _ = tx.closed() => return,
        }
        (view, advances) = match follower.read_output(id, &mut cursor).await {
            Ok(Some(read)) => read,
            Ok(None) => {
                let _ = tx
                    .send(event("error", &format!("task {id} was deleted")))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(event("error", &e.to_string())).await;
                return;
            }
        };
    }
}

/// `GET /tasks/{id}/output/full?stream=stdout|stderr&attempt=N`: the output this node captured
/// of an attempt (the latest it ran when `attempt` is not given), as `text/plain`, read from the
/// file in chunks; `404` when this node has none (capture off, another node ran it, expired).
pub async fn full(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{path}` is not a task id")))?;
    let (mut stream, mut attempt) = (Stream::Stdout, None);
    for (key, value) in query.iter() {
        match key.as_str() {
            "stream" => {
                stream = Stream::from_name(value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`stream`: `{value}` is neither stdout nor stderr"
                    ))
                })?
            }
            "attempt" => {
                attempt = Some(value.parse::<i32>().map_err(|_| {
                    ApiError::bad_request(format!("`attempt`: `{value}` is not a number"))
                })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`"
                )))
            }
        }
    }
    let not_here = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "node {} has no captured output of task {id}",
                state.node.worker_id
            ),
        )
    };
    let dir = state.node.output_dir.clone().ok_or_else(not_here)?;
    let file = state
        .runtime
        .spawn(async move {
            let path =
                tokio::task::spawn_blocking(move || capture::find(&dir, id, attempt, stream))
                    .await
                    .ok()
                    .flatten()?;
            tokio::fs::File::open(path).await.ok()
        })
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_here)?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(web::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_put_each_line_on_a_data_line() {
        assert_eq!(
            event("stdout", "one\ntwo"),
            web::Bytes::from("event: stdout\ndata: one\ndata: two\n\n")
        );
        assert_eq!(event("gap", ""), web::Bytes::from("event: gap\ndata: \n\n"));
    }
}
