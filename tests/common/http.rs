//! Test support for the HTTP API: a free local port, a node serving HTTP, plain requests.
#![allow(dead_code)]

use std::time::Duration;

use super::node::{wait_until, NodeProcess};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A node with `--http 127.0.0.1:<free port>`; returns it and its base URL once /healthz answers.
pub async fn node_with_http(url: &str, worker_id: i64, extra: &[&str]) -> (NodeProcess, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--http", addr.as_str()];
    args.extend_from_slice(extra);
    let node = NodeProcess::start(url, worker_id, &args);
    let base = format!("http://{addr}");
    wait_until(Duration::from_secs(20), || async {
        request("GET", &format!("{base}/healthz"), None).0 == 200
    })
    .await
    .unwrap_or_else(|_| panic!("node {worker_id} did not serve HTTP on {addr}"));
    (node, base)
}

/// One request; returns the status (0 when nothing answered) and the body.
pub fn request(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build();
    let req = agent.request(method, url);
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match result {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// One request with `Authorization: Bearer <token>`; returns the status and the body. Panics
/// when nothing answers (a test of the token rules needs an answer).
pub fn request_with_token(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build();
    let req = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// A request whose answer must be JSON.
pub fn request_json(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = request(method, url, body);
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url}: {status} not JSON ({e}): {text}"));
    (status, value)
}

/// A token file (`read <token>` / `write <token>` lines) under `dir`, mode 600 as the node
/// requires; returns its path.
pub fn token_file(dir: &std::path::Path, lines: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, lines).expect("write the token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.display().to_string()
}
