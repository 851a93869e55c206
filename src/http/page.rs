//! The plain status page (`GET /status`; the console at `GET /` is `console.rs`): one
//! self-contained HTML document (inline CSS, no script, no CDN), rendered on the server from the
//! cluster overview and reloading itself every 2 seconds — for a browser without JavaScript or a
//! `curl`. Shows live nodes (heartbeat age, load, memory), coordinators, queue depth per group,
//! running and recent tasks. Every value from the database is HTML-escaped. Must never write.

use std::fmt::Write as _;

use actix_web::{web, HttpResponse};

use super::api::overview;
use super::HttpState;
#[cfg(test)]
use crate::db::overview::HorizonHolder;
use crate::db::overview::{ClusterOverview, TaskBrief};
use crate::humanize::{human_bytes, human_secs};

const REFRESH_SECS: u32 = 2;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#eee;font-weight:600}td.cmd{font-family:monospace;white-space:normal}
.muted{color:#777}.bad{color:#b00;font-weight:600}.ok{color:#070}.empty{color:#777;font-style:italic}
.st-CS{color:#070}.st-CF{color:#b00}.st-CC{color:#a60}.st-AE{color:#06c}";

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| esc(&v.to_string()))
}

fn table(out: &mut String, id: &str, header: &[&str], rows: &[String]) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td class=\"empty\" colspan=\"{}\">none</td></tr>",
            header.len()
        );
    }
    for r in rows {
        out.push_str(r);
    }
    out.push_str("</tbody></table>");
}

fn task_rows(tasks: &[TaskBrief], class: &str) -> Vec<String> {
    tasks
        .iter()
        .map(|t| {
            let command = t.command.as_deref().unwrap_or_default().join(" ");
            format!(
                "<tr class=\"{class}\" data-task-id=\"{id}\"><td>{id}</td><td class=\"st-{st}\">{st}</td>\
                 <td>{group}</td><td>{worker}</td><td>{attempt}</td><td>{secs}</td><td>{exit}</td>\
                 <td>{by}</td><td class=\"cmd\">{cmd}</td></tr>",
                id = t.id,
                st = esc(&t.state_id),
                group = t.group_id,
                worker = opt(t.worker_id),
                attempt = t.attempt,
                secs = t.seconds.map_or("-".into(), human_secs),
                exit = opt(t.exit_code),
                by = match (&t.created_by, &t.changed_by) {
                    (created, Some(changed)) if Some(changed) != created.as_ref() => format!(
                        "{} (then {})",
                        opt(created.as_deref()),
                        esc(changed)
                    ),
                    (created, _) => opt(created.as_deref()),
                },
                cmd = esc(&command),
            )
        })
        .collect()
}

/// The page for an overview.
pub fn render(
    o: &ClusterOverview,
    this_worker: i64,
    horizon_warning: std::time::Duration,
) -> String {
    let mut out = String::with_capacity(8192);
    let live = o.live_nodes().count();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>pgtaskd: {live} node(s)</title><style>{STYLE}</style></head><body>\
         <h1>pgtaskd cluster</h1><div class=\"muted\">served by node {this_worker} · database time {now} · \
         refreshes every {REFRESH_SECS}s</div>",
        now = esc(&o.now)
    );
    for warning in o.warnings(horizon_warning) {
        let _ = write!(
            out,
            "<p class=\"bad warning\">warning: {}</p>",
            esc(&warning)
        );
    }

    let _ = write!(out, "<h2>Nodes ({live} alive)</h2>");
    let nodes: Vec<String> = o
        .live_nodes()
        .map(|n| {
            let state = if n.low_memory {
                "<span class=\"bad\">low memory: not claiming</span>".to_owned()
            } else if n.stop > 0 {
                format!("<span class=\"bad\">stop {}</span>", n.stop)
            } else {
                "<span class=\"ok\">alive</span>".to_owned()
            };
            format!(
                "<tr class=\"node\" data-node-id=\"{id}\"><td>{id}</td><td>{name}</td><td>{host}</td>\
                 <td>{group}</td><td>{state}</td><td>{tasks}/{max}</td><td>{hb}</td><td>{load}</td>\
                 <td>{free}</td></tr>",
                id = n.id,
                name = opt(n.node_name.as_deref()),
                host = opt(n.host.as_deref()),
                group = n.group_id,
                tasks = n.task_count,
                max = n.max_task_count,
                hb = n.heartbeat_age.map_or("-".into(), human_secs),
                load = n.load1.map_or("-".into(), |l| format!("{l:.2}")),
                free = match (n.free_memory, n.total_memory) {
                    (Some(f), Some(t)) => format!("{} of {}", human_bytes(f), human_bytes(t)),
                    _ => "-".into(),
                },
            )
        })
        .collect();
    table(
        &mut out,
        "nodes",
        &[
            "id",
            "name",
            "host",
            "group",
            "state",
            "tasks",
            "heartbeat",
            "load",
            "free memory",
        ],
        &nodes,
    );
    let gone = o.nodes.len() - live;
    if gone > 0 {
        let _ = write!(
            out,
            "<div class=\"muted\">{gone} stopped or dead node(s) not shown</div>"
        );
    }

    out.push_str("<h2>Coordinators</h2>");
    let coordinators: Vec<String> = o
        .coordinators
        .iter()
        .map(|c| {
            format!(
                "<tr class=\"coordinator\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.group_id,
                opt(c.worker_id),
                c.term,
                opt(c.elected_at.as_deref())
            )
        })
        .collect();
    table(
        &mut out,
        "coordinators",
        &["group", "worker", "term", "elected"],
        &coordinators,
    );

    out.push_str("<h2>Queues</h2>");
    let groups: Vec<String> = o
        .groups
        .iter()
        .map(|g| {
            format!(
                "<tr class=\"queue\" data-group-id=\"{}\"><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                g.group_id,
                g.group_id,
                if g.paused { " (paused)" } else { "" },
                g.waiting,
                g.running,
                g.drafts,
                g.scheduled,
                g.oldest_waiting.map_or("-".into(), human_secs),
                g.nodes
            )
        })
        .collect();
    table(
        &mut out,
        "queues",
        &[
            "group",
            "waiting",
            "running",
            "drafts",
            "scheduled",
            "oldest wait",
            "nodes",
        ],
        &groups,
    );

    if !o.limits.is_empty() {
        out.push_str("<h2>Limits</h2>");
        let limits: Vec<String> = o
            .limits
            .iter()
            .map(|l| {
                format!(
                    "<tr class=\"limit\" data-group-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    l.group_id,
                    l.group_id,
                    esc(&l.kind),
                    esc(l.key.as_deref().unwrap_or("-")),
                    l.max_running,
                    l.running.map_or("-".into(), |r| r.to_string()),
                    l.waiting,
                    l.tokens_left.map_or("-".into(), |t| format!("{t:.1}"))
                )
            })
            .collect();
        table(
            &mut out,
            "limits",
            &[
                "group", "kind", "key", "limit", "running", "waiting", "tokens",
            ],
            &limits,
        );
    }

    let task_header = [
        "id", "state", "group", "worker", "attempt", "time", "exit", "by", "command",
    ];
    let _ = write!(out, "<h2>Running tasks ({})</h2>", o.running.len());
    table(
        &mut out,
        "running",
        &task_header,
        &task_rows(&o.running, "running-task"),
    );
    out.push_str("<h2>Recently finished</h2>");
    table(
        &mut out,
        "recent",
        &task_header,
        &task_rows(&o.recent, "recent-task"),
    );
    out.push_str("</body></html>");
    out
}

/// `GET /status`.
pub async fn status_page(state: web::Data<HttpState>) -> HttpResponse {
    match overview(&state, 20).await {
        Ok(o) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(render(
                &o,
                state.node.worker_id,
                state.node.config.horizon_warning,
            )),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
                 content=\"{REFRESH_SECS}\"><title>pgtaskd: unavailable</title></head><body>\
                 <h1>pgtaskd</h1><p>cannot read the cluster: {}</p></body></html>",
                esc(&e.message)
            )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let o = ClusterOverview {
            now: "now".into(),
            nodes: vec![],
            coordinators: vec![],
            groups: vec![],
            limits: vec![crate::db::overview::LimitInfo {
                group_id: 0,
                kind: "key".into(),
                key: Some("<i>k</i>".into()),
                max_running: 1,
                running: Some(1),
                waiting: 0,
                tokens_left: None,
            }],
            running: vec![TaskBrief {
                id: 1,
                state_id: "AE".into(),
                group_id: 0,
                worker_id: Some(1),
                command: Some(vec!["echo".into(), "<script>alert(1)</script>".into()]),
                attempt: 1,
                started: None,
                finished: None,
                seconds: Some(1.0),
                exit_code: None,
                error: None,
                created_by: Some("<b>alice</b>".into()),
                changed_by: None,
            }],
            recent: vec![],
            horizon: Some(HorizonHolder {
                kind: "transaction".into(),
                pid: Some(42),
                holder: Some("<b>report</b>".into()),
                role: None,
                age_seconds: Some(90.0),
                xid_age: Some(10),
                state: Some("idle in transaction".into()),
            }),
            tables: vec![],
        };
        let html = render(&o, 1, std::time::Duration::from_secs(60));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(
            html.contains("&lt;i&gt;k&lt;/i&gt;"),
            "a key is escaped: {html}"
        );
        assert!(html.contains("data-task-id=\"1\""));
        assert!(
            html.contains("&lt;b&gt;alice&lt;/b&gt;"),
            "the creator is shown, escaped: {html}"
        );
        assert!(!html.contains("<b>report"), "{html}");
        assert!(
            html.contains("warning: transaction") && html.contains("pid 42"),
            "the held horizon is warned about: {html}"
        );
        let html = render(&o, 1, std::time::Duration::from_secs(120));
        assert!(!html.contains("warning:"), "under the threshold: {html}");
    }
}
